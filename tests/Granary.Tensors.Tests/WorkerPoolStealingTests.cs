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
        // Item 0 heads the caller's run and is slow; the rest of that run must be stolen and still run exactly once, and
        // the held-up thread keeps no more than the one claim it made with item 0.
        var counts = new int[300];
        var threads = new int[counts.Length];
        fixed (int* pointer = counts)
        fixed (int* threadPointer = threads)
        {
            var job = new SlowJob { Counts = pointer, Threads = threadPointer };
            _pool.Run(counts.Length, &SlowFirstItem, &job);
        }

        Assert.All(counts, c => Assert.Equal(1, c));
        var heldUp = threads.Count(t => t == threads[0]);
        Assert.InRange(heldUp, 1, WorkerPool.MaxClaimItems);
    }

    public void Dispose() => _pool.Dispose();

    private static void CountItem(void* counts, int item) => Interlocked.Increment(ref ((int*)counts)[item]);

    private static void SlowFirstItem(void* arguments, int item)
    {
        var job = (SlowJob*)arguments;
        if (item == 0)
        {
            Thread.Sleep(50);
        }

        job->Threads[item] = Environment.CurrentManagedThreadId;
        Interlocked.Increment(ref job->Counts[item]);
    }

    private struct SlowJob
    {
        public int* Counts;
        public int* Threads;
    }
}
