using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed unsafe class WorkerPoolTests : IDisposable
{
    private readonly WorkerPool _pool = new(3);

    [Fact]
    public void RunsEveryItemExactlyOnce()
    {
        var counts = new int[1000];
        fixed (int* pointer = counts)
        {
            for (var repeat = 0; repeat < 50; repeat++)
            {
                _pool.Run(counts.Length, &CountItem, pointer);
            }
        }

        Assert.All(counts, c => Assert.Equal(50, c));
    }

    [Fact]
    public void RethrowsAWorkItemFailureOnTheCallerAndStaysUsable()
    {
        var counts = new int[64];
        fixed (int* pointer = counts)
        {
            var items = (nint)pointer;
            var error = Assert.Throws<InvalidOperationException>(() => _pool.Run(counts.Length, &FailOnItem13, (void*)items));
            Assert.Equal("item 13", error.Message);
            counts.AsSpan().Clear();
            _pool.Run(counts.Length, &CountItem, pointer);
        }

        Assert.All(counts, c => Assert.Equal(1, c));
    }

    public void Dispose() => _pool.Dispose();

    private static void CountItem(void* counts, int item) => Interlocked.Increment(ref ((int*)counts)[item]);

    private static void FailOnItem13(void* counts, int item)
    {
        if (item == 13)
        {
            throw new InvalidOperationException("item 13");
        }

        Interlocked.Increment(ref ((int*)counts)[item]);
    }
}
