using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Bench;

/// <summary>
/// Measures sustained memory read bandwidth: every thread sums its own slice of a buffer far larger than the caches,
/// best of several passes and of several read loops (plain, and with software prefetch at two distances, which on
/// some machines streams faster than the hardware prefetcher alone). This is the roofline a memory-bound kernel (a
/// decode GEMV) is judged against, so it is the best rate any of them reaches, never a typical one. One probe keeps
/// its buffer, so it can be measured again between the runs of a benchmark at little cost.
/// </summary>
public sealed unsafe class MemoryBandwidthProbe : IDisposable
{
    private static readonly (string Name, int PrefetchBytes)[] Methods = [("sum", 0), ("sum+prefetch 1 KiB", 1024), ("sum+prefetch 4 KiB", 4096)];

    private readonly int _threads;
    private readonly long _slice;
    private readonly float[] _sums;
    private byte* _buffer;

    public MemoryBandwidthProbe(int threads, long bufferBytes = 1L << 30)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        _threads = threads;
        BufferBytes = bufferBytes;
        _slice = bufferBytes / threads / 256 * 256;
        _sums = new float[threads];
        _buffer = (byte*)NativeMemory.AlignedAlloc((nuint)bufferBytes, 64);

        // Touch every page so the first timed pass does not measure page faults.
        NativeMemory.Fill(_buffer, (nuint)bufferBytes, 1);
    }

    public long BufferBytes { get; }

    /// <summary>The best of <paramref name="passes"/> passes of each read loop.</summary>
    public MemoryBandwidth Measure(int passes = 5)
    {
        ObjectDisposedException.ThrowIf(_buffer == null, this);
        var best = double.MaxValue;
        var bestMethod = Methods[0].Name;
        foreach (var (name, prefetchBytes) in Methods)
        {
            for (var pass = 0; pass < passes; pass++)
            {
                var stopwatch = Stopwatch.StartNew();
                Parallel.For(0, _threads, new ParallelOptions { MaxDegreeOfParallelism = _threads }, t =>
                    _sums[t] = SumFloats((float*)(_buffer + (t * _slice)), _slice / sizeof(float), prefetchBytes));
                var seconds = stopwatch.Elapsed.TotalSeconds;
                if (seconds < best)
                {
                    (best, bestMethod) = (seconds, name);
                }
            }
        }

        return new MemoryBandwidth(_slice * _threads / best, BufferBytes, _threads, bestMethod);
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(_buffer);
        _buffer = null;
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

/// <summary>One bandwidth measurement of a <see cref="MemoryBandwidthProbe"/>.</summary>
public sealed class MemoryBandwidth(double bytesPerSecond, long bufferBytes, int threads, string method)
{
    public double BytesPerSecond { get; } = bytesPerSecond;

    public double GigabytesPerSecond => BytesPerSecond / 1e9;

    public long BufferBytes { get; } = bufferBytes;

    public int Threads { get; } = threads;

    /// <summary>The read loop that gave the best pass.</summary>
    public string Method { get; } = method;

    public static MemoryBandwidth Measure(int threads)
    {
        using var probe = new MemoryBandwidthProbe(threads);
        return probe.Measure();
    }

    public static MemoryBandwidth Better(MemoryBandwidth a, MemoryBandwidth b) => b.BytesPerSecond > a.BytesPerSecond ? b : a;
}
