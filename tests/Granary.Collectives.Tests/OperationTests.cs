namespace Granary.Collectives.Tests;

public class OperationTests
{
    [Theory]
    [InlineData("ring", 3, 5)]
    [InlineData("ring", 3, 40_001)]
    [InlineData("mesh", 3, 5)]
    [InlineData("shm", 3, 40_001)]
    [InlineData("tcp", 2, 0)]
    public void AllGatherConcatenatesInRankOrder(string backend, int size, int length)
    {
        RankHarness.RunAll(size, backend, group =>
        {
            var input = Enumerable.Range(0, length).Select(i => RankHarness.Value(group.Rank, i)).ToArray();
            var output = new int[size * length];
            group.AllGather<int>(input, output);
            var expected = Enumerable.Range(0, size).SelectMany(r => Enumerable.Range(0, length).Select(i => RankHarness.Value(r, i))).ToArray();
            Assert.Equal(expected, output);
        });
    }

    [Theory]
    [InlineData("ring", 3, 7)]
    [InlineData("ring", 3, 30_001)]
    [InlineData("mesh", 3, 7)]
    [InlineData("shm", 3, 30_001)]
    [InlineData("ring", 2, 0)]
    public void ReduceScatterGivesEachRankItsBlockOfTheSum(string backend, int size, int blockLength)
    {
        RankHarness.RunAll(size, backend, group =>
        {
            var input = Enumerable.Range(0, size * blockLength).Select(i => (float)RankHarness.Value(group.Rank, i)).ToArray();
            var output = new float[blockLength];
            group.ReduceScatter<float>(input, output);
            for (var i = 0; i < blockLength; i++)
            {
                var global = (group.Rank * blockLength) + i;
                Assert.Equal(Enumerable.Range(0, size).Sum(r => RankHarness.Value(r, global)), output[i]);
            }
        });
    }

    [Theory]
    [InlineData("tcp", 3, 1)]
    [InlineData("tcp", 3, 300_001)]
    [InlineData("shm", 3, 300_001)]
    public void BroadcastCopiesTheRootsBuffer(string backend, int size, int length)
    {
        RankHarness.RunAll(size, backend, group =>
        {
            var buffer = Enumerable.Range(0, length).Select(i => RankHarness.Value(group.Rank, i)).ToArray();
            group.Broadcast<int>(buffer, root: 1);
            Assert.Equal(Enumerable.Range(0, length).Select(i => RankHarness.Value(1, i)), buffer);
        });
    }

    [Theory]
    [InlineData("tcp")]
    [InlineData("shm")]
    public void SendAndRecvPassMessagesAroundTheRing(string backend)
    {
        const int size = 3;
        const int length = 200_003;
        RankHarness.RunAll(size, backend, group =>
        {
            var outgoing = Enumerable.Range(0, length).Select(i => RankHarness.Value(group.Rank, i)).ToArray();
            var incoming = new int[length];
            var right = (group.Rank + 1) % size;
            var left = (group.Rank + size - 1) % size;

            // Even ranks send first, odd ranks receive first, so no rank waits on a send nobody reads.
            if (group.Rank % 2 == 0)
            {
                group.Send<int>(outgoing, right);
                group.Recv<int>(incoming, left);
            }
            else
            {
                group.Recv<int>(incoming, left);
                group.Send<int>(outgoing, right);
            }

            Assert.Equal(Enumerable.Range(0, length).Select(i => RankHarness.Value(left, i)), incoming);
        });
    }

    [Theory]
    [InlineData("tcp")]
    [InlineData("shm")]
    public void BarrierHoldsEveryRankUntilTheLastArrives(string backend)
    {
        var arrived = 0;
        RankHarness.RunAll(3, backend, group =>
        {
            if (group.Rank == 2)
            {
                Thread.Sleep(300);
            }

            Interlocked.Increment(ref arrived);
            group.Barrier();
            Assert.Equal(3, Volatile.Read(ref arrived));
        });
    }

    [Theory]
    [InlineData("ring")]
    [InlineData("shm")]
    public void SplitFormsGroupsByColorOrderedByKey(string backend)
    {
        const int size = 4;
        RankHarness.RunAll(size, backend, group =>
        {
            // Even and odd ranks; keys reverse the order inside each half.
            using var half = group.Split(group.Rank % 2, key: size - group.Rank);
            Assert.Equal(2, half.Size);
            Assert.Equal(group.Rank < 2 ? 1 : 0, half.Rank);

            var values = Enumerable.Range(0, 1001).Select(i => (float)RankHarness.Value(group.Rank, i)).ToArray();
            half.AllSum<float>(values);
            var partner = group.Rank ^ 2;
            Assert.Equal(Enumerable.Range(0, 1001).Select(i => (float)(RankHarness.Value(group.Rank, i) + RankHarness.Value(partner, i))), values);

            // The parent still works after its child.
            Span<int> one = [1];
            group.AllSum(one);
            Assert.Equal(size, one[0]);
        });
    }
}

public class TensorTests
{
    [Theory]
    [InlineData("ring")]
    [InlineData("shm")]
    public void CpuTensorsAreReducedAndGatheredInPlace(string backend)
    {
        const int size = 3;
        using var cpu = new Granary.Tensors.Cpu.CpuBackend(threads: 1);
        RankHarness.RunAll(size, backend, group =>
        {
            var values = Enumerable.Range(0, 2 * 501).Select(i => (float)RankHarness.Value(group.Rank, i)).ToArray();
            using var tensor = cpu.Upload(System.Runtime.InteropServices.MemoryMarshal.AsBytes(values.AsSpan()), Granary.Tensors.DType.F32, 2, 501);
            group.AllSum(tensor);
            var sums = Granary.Tensors.Cpu.CpuBackend.AsSpan<float>(tensor).ToArray();
            Assert.Equal(Enumerable.Range(0, values.Length).Select(i => (float)Enumerable.Range(0, size).Sum(r => RankHarness.Value(r, i))), sums);

            using var gathered = cpu.Allocate(Granary.Tensors.DType.F32, size * 2, 501);
            group.AllGather(tensor, gathered);
            var all = Granary.Tensors.Cpu.CpuBackend.AsSpan<float>(gathered).ToArray();
            for (var r = 0; r < size; r++)
            {
                Assert.Equal(sums, all.AsSpan(r * sums.Length, sums.Length).ToArray());
            }
        });
    }
}
