namespace Granary.Collectives.Tests;

/// <summary>Tests that run alone: they count the process's thread-pool work, which tests running beside them would add to.</summary>
[CollectionDefinition(nameof(Alone), DisableParallelization = true)]
public sealed class Alone;

[Collection(nameof(Alone))]
public class TcpDataPlaneTests
{
    [Theory]
    [InlineData("tcp", 3)]
    [InlineData("ring", 3)]
    public void AllSumsRunOnTheCallingThreadAloneAndAllocateNothing(string backend, int size)
    {
        // A data socket that .NET's socket engine watches wakes the engine's thread and a thread-pool worker for every
        // message that arrives: two thread hand-offs per message, which once cost small all-sums most of their time.
        const int Iterations = 2000;
        long before = 0;
        long after = 0;
        var allocated = new long[size];
        using var start = new Barrier(size, _ => before = ThreadPool.CompletedWorkItemCount);
        using var end = new Barrier(size, _ => after = ThreadPool.CompletedWorkItemCount);
        RankHarness.RunAll(size, backend, group =>
        {
            Span<float> value = [group.Rank];
            Assert.True(start.SignalAndWait(TimeSpan.FromSeconds(30)), "a rank did not start");
            var bytes = GC.GetAllocatedBytesForCurrentThread();
            for (var i = 0; i < Iterations; i++)
            {
                group.AllSum(value);
            }

            allocated[group.Rank] = GC.GetAllocatedBytesForCurrentThread() - bytes;
            Assert.True(end.SignalAndWait(TimeSpan.FromSeconds(30)), "a rank did not finish");
        });

        Assert.True(after - before < Iterations / 20, $"{after - before} thread-pool work items ran during {Iterations} all-sums");
        Assert.All(allocated, bytes => Assert.Equal(0, bytes));
    }
}
