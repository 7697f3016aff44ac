using System.Runtime.InteropServices;
using Granary.Tensors;

namespace Granary.Collectives.Tests;

public class AllReduceTests
{
    public static TheoryData<string, int, int> Cases()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var backend in new[] { "ring", "mesh", "tcp", "shm" })
        {
            // 4 ranks: tcp's small all-sums take recursive doubling there, shm's 4 KiB ones two exchanges.
            foreach (var size in backend is "tcp" or "shm" ? new[] { 2, 3, 4 } : [2, 3])
            {
                // Empty, one element, odd, across the small-message threshold, and several ring windows and stripes.
                foreach (var length in new[] { 0, 1, 7, 1001, 150_001 })
                {
                    data.Add(backend, size, length);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void AllSumFloat32MatchesReference(string backend, int size, int length)
    {
        var expected = new float[length];
        for (var i = 0; i < length; i++)
        {
            for (var r = 0; r < size; r++)
            {
                expected[i] += RankHarness.Value(r, i);
            }
        }

        RankHarness.RunAll(size, backend, group =>
        {
            var buffer = Enumerable.Range(0, length).Select(i => (float)RankHarness.Value(group.Rank, i)).ToArray();
            group.AllSum<float>(buffer);
            Assert.Equal(expected, buffer);
        });
    }

    [Theory]
    [InlineData("shm", 2)]
    [InlineData("shm", 3)]
    [InlineData("tcp", 3)]
    public void BackToBackSmallAllSumsEachGetTheirOwnSum(string backend, int size)
    {
        // Sizes under and over the in-line slot of shared memory, alternating, with new values every time: a slot
        // reused before every peer read it would mix two all-sums.
        RankHarness.RunAll(size, backend, group =>
        {
            for (var iteration = 0; iteration < 3000; iteration++)
            {
                var length = 1 + (iteration % 9);
                var buffer = new float[length];
                var expected = new float[length];
                for (var i = 0; i < length; i++)
                {
                    buffer[i] = (group.Rank * 1000) + iteration + i;
                    for (var r = 0; r < size; r++)
                    {
                        expected[i] += (r * 1000) + iteration + i;
                    }
                }

                group.AllSum<float>(buffer);
                Assert.Equal(expected, buffer);
            }
        });
    }

    [Theory]
    [InlineData("ring", 3, 100_003)]
    [InlineData("mesh", 3, 100_003)]
    [InlineData("shm", 3, 100_003)]
    [InlineData("ring", 4, 100_003)]
    [InlineData("tcp", 4, 101)] // recursive doubling: sums grouped differently from the mesh
    [InlineData("tcp", 8, 101)]
    public void AllSumOfRandomFloatsIsCloseToTheReferenceAndIdenticalOnEveryRank(string backend, int size, int length)
    {
        var inputs = Enumerable.Range(0, size).Select(r =>
        {
            var random = new Random(r + 1);
            return Enumerable.Range(0, length).Select(_ => (float)(random.NextDouble() * 2 - 1)).ToArray();
        }).ToArray();
        var results = new float[size][];
        RankHarness.RunAll(size, backend, group =>
        {
            var buffer = (float[])inputs[group.Rank].Clone();
            group.AllSum<float>(buffer);
            results[group.Rank] = buffer;
        });

        for (var i = 0; i < length; i++)
        {
            var reference = 0.0;
            for (var r = 0; r < size; r++)
            {
                reference += inputs[r][i];
            }

            Assert.True(Math.Abs(results[0][i] - reference) < 1e-5, $"element {i}: {results[0][i]} vs {reference}");
        }

        for (var r = 1; r < size; r++)
        {
            Assert.Equal(results[0], results[r]);
        }
    }

    [Theory]
    [InlineData("ring", DType.F16)]
    [InlineData("mesh", DType.F16)]
    [InlineData("shm", DType.F16)]
    [InlineData("ring", DType.BF16)]
    [InlineData("mesh", DType.BF16)]
    [InlineData("shm", DType.BF16)]
    public void AllSumHalfTypesMatchesReference(string backend, DType dtype)
    {
        const int size = 3;
        const int length = 40_001;
        RankHarness.RunAll(size, backend, group =>
        {
            var buffer = new ushort[length];
            for (var i = 0; i < length; i++)
            {
                buffer[i] = Encode(RankHarness.Value(group.Rank, i), dtype);
            }

            group.AllReduce(MemoryMarshal.AsBytes(buffer.AsSpan()), dtype, ReduceOp.Sum);
            for (var i = 0; i < length; i++)
            {
                var reference = 0;
                for (var r = 0; r < size; r++)
                {
                    reference += RankHarness.Value(r, i);
                }

                Assert.Equal(reference, Decode(buffer[i], dtype));
            }
        });
    }

    [Fact]
    public void HalfSumsAccumulateInSingleAndRoundOnce()
    {
        // 2048 + 1 + 1 in f16: adding 1 to 2048 in f16 rounds back to 2048 each time, but the f32 sum 2050 is representable.
        RankHarness.RunAll(3, "mesh", group =>
        {
            Span<Half> value = [group.Rank == 0 ? (Half)2048 : (Half)1];
            group.AllSum(value);
            Assert.Equal((Half)2050, value[0]);
        });
    }

    [Theory]
    [InlineData("ring")]
    [InlineData("mesh")]
    [InlineData("shm")]
    public void AllMaxAndAllMinOnInt32(string backend)
    {
        const int size = 3;
        const int length = 9_999;
        RankHarness.RunAll(size, backend, group =>
        {
            var max = Enumerable.Range(0, length).Select(i => RankHarness.Value(group.Rank, i)).ToArray();
            var min = (int[])max.Clone();
            group.AllMax<int>(max);
            group.AllMin<int>(min);
            for (var i = 0; i < length; i++)
            {
                var values = Enumerable.Range(0, size).Select(r => RankHarness.Value(r, i)).ToArray();
                Assert.Equal(values.Max(), max[i]);
                Assert.Equal(values.Min(), min[i]);
            }
        });
    }

    [Fact]
    public void SingleRankGroupLeavesDataAlone()
    {
        using var group = Group.Init(new CollectiveOptions());
        float[] data = [1, 2, 3];
        group.AllSum<float>(data);
        Assert.Equal([1f, 2f, 3f], data);
        Assert.Equal(1, group.Size);
    }

    internal static ushort Encode(int value, DType dtype) => dtype == DType.F16
        ? BitConverter.HalfToUInt16Bits((Half)value)
        : (ushort)(BitConverter.SingleToUInt32Bits(value) >> 16);

    internal static float Decode(ushort bits, DType dtype) => dtype == DType.F16
        ? (float)BitConverter.UInt16BitsToHalf(bits)
        : BitConverter.UInt32BitsToSingle((uint)bits << 16);
}
