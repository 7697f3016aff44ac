using System.Runtime.InteropServices;
using System.Text;

namespace Granary.Tensors.Cuda;

/// <summary>
/// The backend's kernels: the embedded CUDA C sources (Kernels/*.cu) compiled once by NVRTC for the device's exact
/// architecture and loaded as one module (the decode fusions as a second one, when first used). Functions are looked
/// up by name on first use.
/// </summary>
internal sealed unsafe class CudaModule : IDisposable
{
    // Order matters: later files use helpers of earlier ones.
    private static readonly string[] Sources = ["common.cuh", "elementwise.cu", "linear.cu", "attention.cu", "moe.cu"];

    /// <summary>The decode fusions, a module of their own (compiled on first use) on the GEMV helpers of linear.cu.</summary>
    internal static readonly string[] FusedSources = ["common.cuh", "linear.cu", "fused.cu"];

    private readonly IntPtr _module;
    private readonly Dictionary<string, IntPtr> _functions = [];

    public CudaModule(int computeMajor, int computeMinor, string[]? sources = null)
    {
        var cubin = Compile(LoadSource(sources ?? Sources), $"sm_{computeMajor}{computeMinor}");
        fixed (byte* image = cubin)
        {
            IntPtr module;
            Driver.Check(Driver.cuModuleLoadData(&module, image), "cuModuleLoadData");
            _module = module;
        }
    }

    public IntPtr this[string name]
    {
        get
        {
            lock (_functions)
            {
                if (!_functions.TryGetValue(name, out var function))
                {
                    var bytes = Encoding.ASCII.GetBytes(name + "\0");
                    fixed (byte* pointer = bytes)
                    {
                        Driver.Check(Driver.cuModuleGetFunction(&function, _module, pointer), $"cuModuleGetFunction({name})");
                    }

                    _functions[name] = function;
                }

                return function;
            }
        }
    }

    public void Dispose() => _ = Driver.cuModuleUnload(_module);

    internal static string LoadSource(string[] sources)
    {
        var assembly = typeof(CudaModule).Assembly;
        var text = new StringBuilder();
        foreach (var file in sources)
        {
            var resource = assembly.GetManifestResourceNames().Single(n => n.EndsWith(".Cuda.Kernels." + file, StringComparison.Ordinal));
            using var stream = assembly.GetManifestResourceStream(resource)!;
            using var reader = new StreamReader(stream);
            text.Append("// ---- ").Append(file).Append('\n').Append(reader.ReadToEnd()).Append('\n');
        }

        return text.ToString();
    }

    private static byte[] Compile(string source, string architecture)
    {
        CudaLibraries.EnsureRegistered();
        var sourceBytes = Encoding.UTF8.GetBytes(source + "\0");
        var nameBytes = "granary_kernels.cu\0"u8.ToArray();
        string[] options = [$"--gpu-architecture={architecture}", "--std=c++17", "--fmad=true", "--extra-device-vectorization"];
        var optionBytes = options.Select(o => Encoding.ASCII.GetBytes(o + "\0")).ToArray();
        var handles = optionBytes.Select(b => GCHandle.Alloc(b, GCHandleType.Pinned)).ToArray();
        IntPtr program;
        try
        {
            fixed (byte* sourcePointer = sourceBytes)
            fixed (byte* namePointer = nameBytes)
            {
                Nvrtc.Check(Nvrtc.nvrtcCreateProgram(&program, sourcePointer, namePointer, 0, null, null), "nvrtcCreateProgram");
            }

            var optionPointers = stackalloc byte*[options.Length];
            for (var i = 0; i < options.Length; i++)
            {
                optionPointers[i] = (byte*)handles[i].AddrOfPinnedObject();
            }

            var result = Nvrtc.nvrtcCompileProgram(program, options.Length, optionPointers);
            if (result != 0)
            {
                nuint logSize;
                Nvrtc.Check(Nvrtc.nvrtcGetProgramLogSize(program, &logSize), "nvrtcGetProgramLogSize");
                var log = new byte[(int)logSize + 1];
                fixed (byte* logPointer = log)
                {
                    Nvrtc.Check(Nvrtc.nvrtcGetProgramLog(program, logPointer), "nvrtcGetProgramLog");
                }

                _ = Nvrtc.nvrtcDestroyProgram(&program);
                throw new CudaException($"NVRTC could not compile the CUDA kernels for {architecture}:\n{Encoding.UTF8.GetString(log).TrimEnd('\0')}");
            }
        }
        finally
        {
            foreach (var handle in handles)
            {
                handle.Free();
            }
        }

        try
        {
            nuint size;
            Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize");
            var cubin = new byte[(int)size];
            fixed (byte* pointer = cubin)
            {
                Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(program, pointer), "nvrtcGetCUBIN");
            }

            return cubin;
        }
        finally
        {
            _ = Nvrtc.nvrtcDestroyProgram(&program);
        }
    }
}
