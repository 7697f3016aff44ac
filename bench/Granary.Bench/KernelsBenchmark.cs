using System.Diagnostics;
using System.Runtime.InteropServices;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Bench;

/// <summary>
/// Decode GEMV throughput of the CPU backend for typical layer shapes and weight formats, as GB/s of weight streamed
/// and as a share of the measured memory read bandwidth (the roofline for n = 1).
/// </summary>
internal static class KernelsBenchmark
{
    // Each measurement cycles through enough copies of the weight to exceed the last-level cache.
    private const long MinimumResidentBytes = 512L << 20;

    private static readonly (string Name, int Out, int In)[] Shapes =
    [
        ("1024x3072", 1024, 3072),
        ("3072x1024", 3072, 1024),
        ("151936x1024", 151936, 1024),
    ];

    public static int Run(string[] arguments)
    {
        var threads = arguments.Length > 0 ? int.Parse(arguments[0], System.Globalization.CultureInfo.InvariantCulture) : Environment.ProcessorCount;
        Console.WriteLine($"CPU kernels, {threads} threads, {Environment.ProcessorCount} processors");
        var bandwidth = MemoryBandwidth.Measure(threads);
        Console.WriteLine($"Memory read bandwidth: {bandwidth.GigabytesPerSecond:F1} GB/s (best pass over {bandwidth.BufferBytes >> 20} MiB: {bandwidth.Method})");
        Console.WriteLine();
        Console.WriteLine($"{"GEMV n=1",-14} {"weight",-7} {"MiB",8} {"us/call",10} {"GB/s",8} {"roofline",9}");
        using var backend = new CpuBackend(threads);
        foreach (var (name, outFeatures, inFeatures) in Shapes)
        {
            foreach (var format in new[] { "bf16", "f32", "q4g64" })
            {
                var copies = CreateWeights(backend, format, outFeatures, inFeatures);
                var seconds = TimeGemv(backend, copies, inFeatures, outFeatures, tokens: 1);
                var bytes = copies[0].WeightBytes;
                var gigabytesPerSecond = bytes / seconds / 1e9;
                Console.WriteLine(
                    $"{name,-14} {format,-7} {bytes / 1048576.0,8:F1} {seconds * 1e6,10:F1} {gigabytesPerSecond,8:F1} {gigabytesPerSecond / bandwidth.GigabytesPerSecond,9:P0}");
                foreach (var weight in copies)
                {
                    weight.Dispose();
                }
            }
        }

        Console.WriteLine();
        Console.WriteLine($"{"attention n=1",-14} {"cache",-7} {"MiB",8} {"us/call",10} {"GB/s",8} {"roofline",9}");
        foreach (var positions in new[] { 160, 1024 })
        {
            var (seconds, bytes) = TimeDecodeAttention(backend, positions);
            var gigabytesPerSecond = bytes / seconds / 1e9;
            Console.WriteLine(
                $"{$"{positions} pos",-14} {"f32",-7} {bytes / 1048576.0,8:F1} {seconds * 1e6,10:F1} {gigabytesPerSecond,8:F1} {gigabytesPerSecond / bandwidth.GigabytesPerSecond,9:P0}");
        }

        Console.WriteLine();
        Console.WriteLine($"{"GEMM n=128",-14} {"weight",-7} {"ms/call",10} {"GFLOP/s",9}");
        foreach (var format in new[] { "bf16", "q4g64" })
        {
            var weights = CreateWeights(backend, format, 3072, 1024, copies: 1);
            var seconds = TimeGemv(backend, weights, 1024, 3072, tokens: 128);
            Console.WriteLine($"{"3072x1024",-14} {format,-7} {seconds * 1e3,10:F2} {2.0 * 128 * 3072 * 1024 / seconds / 1e9,9:F1}");
            weights[0].Dispose();
        }

        return 0;
    }

    private static double TimeGemv(CpuBackend backend, LinearWeight[] weights, int inFeatures, int outFeatures, int tokens)
    {
        using var input = backend.Allocate(DType.F32, tokens, inFeatures);
        using var output = backend.Allocate(DType.F32, tokens, outFeatures);
        var random = new Random(1);
        foreach (ref var value in CpuBackend.AsSpan<float>(input))
        {
            value = (float)random.NextDouble() - 0.5f;
        }

        foreach (var weight in weights)
        {
            backend.Linear(input, weight, output);
        }

        return BestSecondsPerCall(call => backend.Linear(input, weights[call % weights.Length], output));
    }

    /// <summary>Best of several rounds, each long enough (>= 0.2 s) to average out timer and scheduling noise.</summary>
    /// <param name="call">Runs call number n (from 0 in each round).</param>
    private static double BestSecondsPerCall(Action<int> call)
    {
        var best = double.MaxValue;
        for (var round = 0; round < 5; round++)
        {
            var calls = 0;
            var stopwatch = Stopwatch.StartNew();
            while (stopwatch.Elapsed.TotalSeconds < 0.2)
            {
                call(calls++);
            }

            best = Math.Min(best, stopwatch.Elapsed.TotalSeconds / calls);
        }

        return best;
    }

    /// <summary>
    /// One query row of Qwen3-0.6B's attention (16 heads on 8 kv heads of 128) over <paramref name="positions"/> cached
    /// positions, cycling through as many layers' caches as exceed the last-level cache, as decode does.
    /// </summary>
    private static (double Seconds, long CacheBytes) TimeDecodeAttention(CpuBackend backend, int positions)
    {
        const int heads = 16, kvHeads = 8, headDim = 128;
        var layerBytes = 2L * positions * kvHeads * headDim * sizeof(float);
        var layers = (int)Math.Max(1, (MinimumResidentBytes / 4) / layerBytes);
        var random = new Random(3);
        var caches = new (Tensor Keys, Tensor Values)[layers];
        for (var layer = 0; layer < layers; layer++)
        {
            caches[layer] = (
                Fill<float>(backend.Allocate(DType.F32, positions, kvHeads, headDim), () => (float)random.NextDouble() - 0.5f),
                Fill<float>(backend.Allocate(DType.F32, positions, kvHeads, headDim), () => (float)random.NextDouble() - 0.5f));
        }

        using var query = Fill<float>(backend.Allocate(DType.F32, 1, heads, headDim), () => (float)random.NextDouble() - 0.5f);
        using var output = backend.Allocate(DType.F32, 1, heads, headDim);
        var scale = 1 / MathF.Sqrt(headDim);
        var best = BestSecondsPerCall(call =>
        {
            var (keys, values) = caches[call % layers];
            backend.Attention(query, keys, values, positions - 1, scale, output);
        });

        foreach (var (keys, values) in caches)
        {
            keys.Dispose();
            values.Dispose();
        }

        return (best, layerBytes);
    }

    private static LinearWeight[] CreateWeights(CpuBackend backend, string format, int outFeatures, int inFeatures, int? copies = null)
    {
        var bytesPerCopy = format switch
        {
            "f32" => 4L * outFeatures * inFeatures,
            "bf16" => 2L * outFeatures * inFeatures,
            _ => (outFeatures * (long)inFeatures / 2) + (4L * outFeatures * inFeatures / 64),
        };
        var count = copies ?? (int)Math.Max(1, (MinimumResidentBytes + bytesPerCopy - 1) / bytesPerCopy);
        var weights = new LinearWeight[count];
        var random = new Random(2);
        for (var c = 0; c < count; c++)
        {
            weights[c] = format switch
            {
                "f32" => new DenseWeight(Fill<float>(backend.Allocate(DType.F32, outFeatures, inFeatures), () => (float)random.NextDouble() - 0.5f)),
                "bf16" => new DenseWeight(Fill<ushort>(backend.Allocate(DType.BF16, outFeatures, inFeatures), () => (ushort)(0x3C00 + random.Next(0x800)))),
                _ => new QuantizedWeight(
                    Fill<uint>(backend.Allocate(DType.U32, outFeatures, inFeatures / 8), () => (uint)random.Next()),
                    Fill<ushort>(backend.Allocate(DType.BF16, outFeatures, inFeatures / 64), () => (ushort)0x3C00),
                    Fill<ushort>(backend.Allocate(DType.BF16, outFeatures, inFeatures / 64), () => (ushort)0xBC00),
                    bits: 4,
                    groupSize: 64),
            };
        }

        return weights;
    }

    private static Tensor Fill<T>(Tensor tensor, Func<T> next)
        where T : unmanaged
    {
        var span = CpuBackend.AsSpan<T>(tensor);
        for (var i = 0; i < span.Length; i++)
        {
            span[i] = next();
        }

        return tensor;
    }
}
