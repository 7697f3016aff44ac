using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

/// <summary>The per-thread runs of <see cref="WorkerPool"/>: items end up done exactly once whoever claims them.</summary>
public sealed unsafe class WorkerPoolStealingTests : IDisposable
{
    private readonly WorkerPool _pool = new(3);

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(5)]
    [InlineData(4097)]
    public void RunsEveryItemOnceForCountsAroundTheThreadCount(int items)
    {
        var counts = new int[items];
        fixed (int* pointer = counts)
        {
            for (var repeat = 0; repeat < 20; repeat++)
            {
                _pool.Run(counts.Length, &CountItem, pointer);
            }
        }

        Assert.All(counts, c => Assert.Equal(20, c));
    }

    [Fact]
    public void OtherThreadsTakeOverTheRunOfAThreadHeldUpByASlowItem()
    {
        // Item 0 heads the caller's run and is slow; the rest of that run must be stolen and still run exactly once.
        var counts = new int[300];
        fixed (int* pointer = counts)
        {
            _pool.Run(counts.Length, &SlowFirstItem, pointer);
        }

        Assert.All(counts, c => Assert.Equal(1, c));
    }

    public void Dispose() => _pool.Dispose();

    private static void CountItem(void* counts, int item) => Interlocked.Increment(ref ((int*)counts)[item]);

    private static void SlowFirstItem(void* counts, int item)
    {
        if (item == 0)
        {
            Thread.Sleep(50);
        }

        Interlocked.Increment(ref ((int*)counts)[item]);
    }
}
