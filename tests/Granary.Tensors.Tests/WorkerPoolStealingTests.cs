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
        // Item 0 heads the caller's run and holds its thread until the other threads have done every item but the ones
        // its claim may keep (at most MaxClaimItems, item 0 included): the rest of its run must be stolen, and every
        // item still runs exactly once. A larger claim would leave that wait to time out.
        var counts = new int[300];
        var job = new SlowJob { Total = counts.Length };
        fixed (int* pointer = counts)
        {
            job.Counts = pointer;
            _pool.Run(counts.Length, &HeldUpFirstItem, &job);
        }

        Assert.All(counts, c => Assert.Equal(1, c));
        Assert.Equal(1, job.OthersFinished);
    }

    public void Dispose() => _pool.Dispose();

    private static void CountItem(void* counts, int item) => Interlocked.Increment(ref ((int*)counts)[item]);

    private static void HeldUpFirstItem(void* arguments, int item)
    {
        var job = (SlowJob*)arguments;
        if (item == 0)
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            bool OthersFinished() => Volatile.Read(ref job->Done) >= job->Total - WorkerPool.MaxClaimItems;
            while (!OthersFinished() && clock.Elapsed < TimeSpan.FromSeconds(20))
            {
                Thread.Sleep(1);
            }

            job->OthersFinished = OthersFinished() ? 1 : 0;
        }

        Interlocked.Increment(ref job->Counts[item]);
        Interlocked.Increment(ref job->Done);
    }

    private struct SlowJob
    {
        public int* Counts;
        public int Total;
        public int Done;
        public int OthersFinished;
    }
}
