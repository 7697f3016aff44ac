namespace Granary.Gateway.Metrics;

/// <summary>A Prometheus histogram: fixed upper bounds, counts and a sum updated without locks.</summary>
internal sealed class Histogram(double[] upperBounds)
{
    private readonly long[] _counts = new long[upperBounds.Length + 1];
    private long _sumBits;

    public IReadOnlyList<double> UpperBounds { get; } = upperBounds;

    /// <summary>Seconds from 1 ms to 60 s: token latencies on a CPU and first tokens behind a long queue both fit.</summary>
    public static double[] LatencyBounds { get; } = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

    public void Observe(double value)
    {
        var bucket = 0;
        while (bucket < UpperBounds.Count && value > UpperBounds[bucket])
        {
            bucket++;
        }

        Interlocked.Increment(ref _counts[bucket]);
        long seen, updated;
        do
        {
            seen = Volatile.Read(ref _sumBits);
            updated = BitConverter.DoubleToInt64Bits(BitConverter.Int64BitsToDouble(seen) + value);
        }
        while (Interlocked.CompareExchange(ref _sumBits, updated, seen) != seen);
    }

    /// <summary>Cumulative counts per bound, the +Inf bucket last, and the sum.</summary>
    public (long[] Cumulative, double Sum) Snapshot()
    {
        var cumulative = new long[_counts.Length];
        long running = 0;
        for (var i = 0; i < _counts.Length; i++)
        {
            running += Volatile.Read(ref _counts[i]);
            cumulative[i] = running;
        }

        return (cumulative, BitConverter.Int64BitsToDouble(Volatile.Read(ref _sumBits)));
    }
}
