using System.Runtime.InteropServices;
using Granary.Tensors;
using Granary.Tensors.Cpu;
using Granary.Tensors.Cuda;
using Granary.Tensors.Numerics;

namespace Granary.Cuda.Tests;

/// <summary>
/// The GPU under test and the CPU backend it is compared with. Without a GPU every test is skipped with the reason;
/// GRANARY_REQUIRE_GPU=1 (set on GPU machines) turns that skip into a failure so a missing library cannot hide.
/// The test classes share one collection, so one backend (not thread-safe) sees one test at a time.
/// </summary>
internal static class Gpu
{
    private static readonly Lazy<(CudaBackend? Backend, string Reason)> Device = new(Open);
    private static readonly Lazy<CpuBackend> Host = new(() => new CpuBackend());
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<int, CudaBackend> Others = new();

    public static CudaBackend Backend
    {
        get
        {
            var (backend, reason) = Device.Value;
            if (backend is not null)
            {
                return backend;
            }

            if (Environment.GetEnvironmentVariable("GRANARY_REQUIRE_GPU") == "1")
            {
                Assert.Fail($"GRANARY_REQUIRE_GPU=1 but no CUDA GPU is usable: {reason}");
            }

            Assert.Skip($"No CUDA GPU here ({reason}); the CUDA tests run on a GPU machine.");
            return null!;
        }
    }

    public static CpuBackend Cpu => Host.Value;

    /// <summary>A backend on GPU <paramref name="device"/> (GPU 0's is <see cref="Backend"/>), made once per test run.</summary>
    public static CudaBackend On(int device)
    {
        var first = Backend;
        return device == 0 ? first : Others.GetOrAdd(device, d => new CudaBackend(d));
    }

    /// <summary>Skips the test on a machine with fewer than <paramref name="count"/> GPUs (even under GRANARY_REQUIRE_GPU=1).</summary>
    public static void RequireDevices(int count)
    {
        _ = Backend;
        var present = CudaBackend.DeviceCount();
        if (present < count)
        {
            Assert.Skip($"Needs {count} GPUs (one rank per GPU); this machine has {present}.");
        }
    }

    private static (CudaBackend?, string) Open()
    {
        if (!CudaBackend.IsAvailable(out var reason))
        {
            return (null, reason);
        }

        return (new CudaBackend(), string.Empty);
    }
}

/// <summary>The same values as a CPU tensor and a CUDA tensor.</summary>
internal sealed class Pair(Tensor cpu, Tensor gpu) : IDisposable
{
    public Tensor Cpu { get; } = cpu;

    public Tensor Gpu { get; } = gpu;

    public static Pair Raw(ReadOnlySpan<byte> bytes, DType dtype, params int[] shape) =>
        new(Tests.Gpu.Cpu.Upload(bytes, dtype, shape), Tests.Gpu.Backend.Upload(bytes, dtype, shape));

    public static Pair Floats(float[] values, DType dtype, params int[] shape) => Raw(Encode(values, dtype), dtype, shape);

    public static Pair Ints(int[] values, params int[] shape) => Raw(MemoryMarshal.AsBytes(values.AsSpan()), DType.I32, shape);

    /// <summary>Zero-filled f32 outputs (poisoned with NaN on the GPU so an unwritten element fails).</summary>
    public static Pair Output(params int[] shape)
    {
        var count = (int)Tensor.ShapeElementCount(shape);
        var nan = Enumerable.Repeat(float.NaN, count).ToArray();
        return new(Tests.Gpu.Cpu.Allocate(DType.F32, shape), Tests.Gpu.Backend.Upload(MemoryMarshal.AsBytes(nan.AsSpan()), DType.F32, shape));
    }

    public static byte[] Encode(float[] values, DType dtype) => dtype switch
    {
        DType.F32 => MemoryMarshal.AsBytes(values.AsSpan()).ToArray(),
        DType.BF16 => MemoryMarshal.AsBytes(values.Select(FloatConversion.SingleToBFloat16).ToArray().AsSpan()).ToArray(),
        DType.F16 => MemoryMarshal.AsBytes(values.Select(v => (Half)v).ToArray().AsSpan()).ToArray(),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    public float[] ReadCpu() => CpuBackend.AsSpan<float>(Cpu).ToArray();

    public float[] ReadGpu() => Read(Gpu);

    public static float[] Read(Tensor tensor)
    {
        var values = new float[tensor.ElementCount];
        tensor.Backend.Download(tensor, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    public static int[] ReadInts(Tensor tensor)
    {
        var values = new int[tensor.ElementCount];
        tensor.Backend.Download(tensor, MemoryMarshal.AsBytes(values.AsSpan()));
        return values;
    }

    /// <summary>
    /// GPU vs CPU: ‖gpu − cpu‖ / ‖cpu‖ under <paramref name="relative"/> and each element within
    /// <paramref name="elementwise"/> × max|cpu|; NaN never passes.
    /// </summary>
    public void AssertMatches(double relative, double elementwise = 0) => AssertClose(ReadCpu(), ReadGpu(), relative, elementwise);

    public static void AssertClose(float[] expected, float[] actual, double relative, double elementwise = 0)
    {
        Assert.Equal(expected.Length, actual.Length);
        double error = 0, norm = 0, largest = 0;
        for (var i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"Element {i} is NaN (expected {expected[i]}).");
            error += Math.Pow(actual[i] - expected[i], 2);
            norm += Math.Pow(expected[i], 2);
            largest = Math.Max(largest, Math.Abs(expected[i]));
        }

        var ratio = Math.Sqrt(error / Math.Max(norm, 1e-30));
        Assert.True(ratio <= relative, $"Relative L2 error {ratio:E3} exceeds {relative:E1}.");
        if (elementwise > 0)
        {
            for (var i = 0; i < expected.Length; i++)
            {
                Assert.True(
                    Math.Abs(actual[i] - expected[i]) <= elementwise * largest,
                    $"Element {i}: expected {expected[i]:R}, got {actual[i]:R} (max |expected| {largest:G4}).");
            }
        }
    }

    public void Dispose()
    {
        Cpu.Dispose();
        Gpu.Dispose();
    }
}

internal static class Random32
{
    public static float[] Floats(int count, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => (float)((random.NextDouble() * 2) - 1) * scale).ToArray();
    }

    public static byte[] Words(int count, int seed)
    {
        var bytes = new byte[count * 4];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
