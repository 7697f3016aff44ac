using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Granary.Bench;

/// <summary>
/// Measures sustained memory read bandwidth: every thread sums its own slice of a buffer far larger than the caches,
/// best of several passes. This is the roofline a memory-bound kernel (a decode GEMV) is judged against.
/// </summary>
public sealed unsafe class MemoryBandwidth
{
    private MemoryBandwidth(double bytesPerSecond, long bufferBytes, int threads)
    {
        BytesPerSecond = bytesPerSecond;
        BufferBytes = bufferBytes;
        Threads = threads;
    }

    public double BytesPerSecond { get; }

    public double GigabytesPerSecond => BytesPerSecond / 1e9;

    public long BufferBytes { get; }

    public int Threads { get; }

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
            for (var pass = 0; pass < passes; pass++)
            {
                var stopwatch = Stopwatch.StartNew();
                Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t =>
                    sums[t] = SumFloats((float*)(buffer + (t * slice)), slice / sizeof(float)));
                best = Math.Min(best, stopwatch.Elapsed.TotalSeconds);
            }

            GC.KeepAlive(sums);
            return new MemoryBandwidth(slice * threads / best, bufferBytes, threads);
        }
        finally
        {
            NativeMemory.AlignedFree(buffer);
        }
    }

    private static float SumFloats(float* data, long count)
    {
        Vector512<float> a = default, b = default, c = default, d = default;
        for (long i = 0; i + 64 <= count; i += 64)
        {
            a += Vector512.Load(data + i);
            b += Vector512.Load(data + i + 16);
            c += Vector512.Load(data + i + 32);
            d += Vector512.Load(data + i + 48);
        }

        return Vector512.Sum(a + b + c + d);
    }
}
