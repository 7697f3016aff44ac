using System.Reflection;
using System.Runtime.InteropServices;

namespace Granary.Tensors.Cuda;

/// <summary>
/// Resolves the NVIDIA libraries by versioned soname (libcuda.so.1, libnvrtc.so.13, libcublasLt.so.13, libnccl.so.2),
/// each overridable by an environment variable holding a path or another name. Nothing is loaded until a CUDA type is
/// used, so machines without a GPU never touch these libraries.
/// </summary>
public static class CudaLibraries
{
    internal const string Driver = "granary-cuda-driver";
    internal const string Nvrtc = "granary-cuda-nvrtc";
    internal const string CublasLt = "granary-cuda-cublaslt";
    internal const string Nccl = "granary-cuda-nccl";

    private static readonly Dictionary<string, (string Variable, string Soname)> Libraries = new()
    {
        [Driver] = ("GRANARY_LIBCUDA", "libcuda.so.1"),
        [Nvrtc] = ("GRANARY_LIBNVRTC", "libnvrtc.so.13"),
        [CublasLt] = ("GRANARY_LIBCUBLASLT", "libcublasLt.so.13"),
        [Nccl] = ("GRANARY_LIBNCCL", "libnccl.so.2"),
    };

    private static readonly Dictionary<string, IntPtr> Loaded = [];
    private static readonly Lock Sync = new();
    private static bool _registered;

    /// <summary>Installs the resolver for this assembly's CUDA imports (idempotent).</summary>
    internal static void EnsureRegistered()
    {
        lock (Sync)
        {
            if (!_registered)
            {
                NativeLibrary.SetDllImportResolver(typeof(CudaLibraries).Assembly, Resolve);
                _registered = true;
            }
        }
    }

    /// <summary>Loads <paramref name="logicalName"/> now, throwing a <see cref="CudaException"/> that names every path tried.</summary>
    internal static IntPtr Load(string logicalName)
    {
        lock (Sync)
        {
            if (Loaded.TryGetValue(logicalName, out var handle))
            {
                return handle;
            }

            var (variable, soname) = Libraries[logicalName];
            var tried = new List<string>();
            foreach (var candidate in Candidates(variable, soname))
            {
                tried.Add(candidate);
                if (NativeLibrary.TryLoad(candidate, out handle))
                {
                    Loaded[logicalName] = handle;
                    return handle;
                }
            }

            throw new CudaException(
                $"Cannot load {soname} (tried {string.Join(", ", tried)}). Install the NVIDIA driver / CUDA 13 libraries or point {variable} at the library.");
        }
    }

    private static IntPtr Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath) =>
        Libraries.ContainsKey(libraryName) ? Load(libraryName) : IntPtr.Zero;

    private static IEnumerable<string> Candidates(string variable, string soname)
    {
        if (Environment.GetEnvironmentVariable(variable) is { Length: > 0 } overridden)
        {
            yield return overridden;
        }

        yield return soname;
        foreach (var root in new[] { Environment.GetEnvironmentVariable("CUDA_HOME"), "/usr/local/cuda" })
        {
            if (!string.IsNullOrEmpty(root))
            {
                yield return Path.Combine(root, "lib64", soname);
                yield return Path.Combine(root, "targets", "x86_64-linux", "lib", soname);
            }
        }
    }
}

/// <summary>A failure reported by the CUDA driver, NVRTC, cuBLASLt or NCCL, or a missing GPU / library.</summary>
public sealed class CudaException : Exception
{
    public CudaException(string message)
        : base(message)
    {
    }
}
