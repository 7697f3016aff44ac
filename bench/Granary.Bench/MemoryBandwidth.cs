using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Bench;

/// <summary>
/// Measures sustained memory read bandwidth: every thread sums its own slice of a buffer far larger than the caches,
/// best of several passes and of several read loops (plain, and with software prefetch at two distances, which on
/// some machines streams faster than the hardware prefetcher alone). This is the roofline a memory-bound kernel (a
/// decode GEMV) is judged against, so it is the best rate any of them reaches, never a typical one.
/// </summary>
public sealed unsafe class MemoryBandwidth
{
    private static readonly (string Name, int PrefetchBytes)[] Methods = [("sum", 0), ("sum+prefetch 1 KiB", 1024), ("sum+prefetch 4 KiB", 4096)];

    private MemoryBandwidth(double bytesPerSecond, long bufferBytes, int threads, string method)
    {
        BytesPerSecond = bytesPerSecond;
        BufferBytes = bufferBytes;
        Threads = threads;
        Method = method;
    }

    public double BytesPerSecond { get; }

    public double GigabytesPerSecond => BytesPerSecond / 1e9;

    public long BufferBytes { get; }

    public int Threads { get; }

    /// <summary>The read loop that gave the best pass.</summary>
    public string Method { get; }

    public static MemoryBandwidth Measure(int threads, long bufferBytes = 1L << 30, int passes = 5)
    {
        var buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bufferBytes, 64);
        try
        {
            // Touch every page so the first timed pass does not measure page faults.
            NativeMemory.Fill(buffer, (nuint)bufferBytes, 1);
            var slice = bufferBytes / threads / 256 * 256;
            var sums = new float[threads];
            var best = double.MaxValue;
            var bestMethod = Methods[0].Name;
            foreach (var (name, prefetchBytes) in Methods)
            {
                for (var pass = 0; pass < passes; pass++)
                {
                    var stopwatch = Stopwatch.StartNew();
                    Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                        sums[t] = SumFloats((float*)(buffer + (t * slice)), slice / sizeof(float), prefetchBytes));
                    var seconds = stopwatch.Elapsed.TotalSeconds;
                    if (seconds < best)
                    {
                        (best, bestMethod) = (seconds, name);
                    }
                }
            }

            GC.KeepAlive(sums);
            return new MemoryBandwidth(slice * threads / best, bufferBytes, threads, bestMethod);
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    private static float SumFloats(float* data, long count, int prefetchBytes)
    {
        Vector512<float> a = default, b = default, c = default, d = default;
        for (long i = 0; i + 64 <= count; i += 64)
        {
            // A prefetch past the slice's end is harmless: prefetches never fault.
            if (prefetchBytes > 0 && Sse.IsSupported)
            {
                var ahead = (byte*)(data + i) + prefetchBytes;
                Sse.Prefetch0(ahead);
                Sse.Prefetch0(ahead + 64);
                Sse.Prefetch0(ahead + 128);
                Sse.Prefetch0(ahead + 192);
            }

            a += Vector512.Load(data + i);
            b += Vector512.Load(data + i + 16);
            c += Vector512.Load(data + i + 32);
            d += Vector512.Load(data + i + 48);
        }

        return Vector512.Sum(a + b + c + d);
    }
}
