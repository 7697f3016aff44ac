using System.Runtime.InteropServices;
using Granary.Models.Sharding;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Sharding;

/// <summary>ShardLinear on dense and MLX-quantized layers: slices and summed partials reproduce the whole layer.</summary>
public sealed class LinearShardingTests
{
    private const int Tokens = 3;

    [Theory]
    [InlineData(false, ShardStrategy.AllToSharded)]
    [InlineData(false, ShardStrategy.ShardedToAll)]
    [InlineData(true, ShardStrategy.AllToSharded)]
    [InlineData(true, ShardStrategy.ShardedToAll)]
    public void ShardsReproduceTheWholeLayer(bool quantized, ShardStrategy strategy)
    {
        const int outFeatures = 6;
        const int inFeatures = 128;
        var input = Random(Tokens * inFeatures, seed: 1);
        var expected = new float[Tokens * outFeatures];
        using (var backend = new CpuBackend(threads: 1))
        using (var layer = MakeLayer(backend, quantized, outFeatures, inFeatures))
        {
            RunLinear(backend, layer, input, inFeatures, expected);
        }

        var outputs = ShardRanks.RunAll(1, 2, groups =>
        {
            var group = groups.Tensor!;
            using var backend = new CpuBackend(threads: 1);
            using var layer = MakeLayer(backend, quantized, outFeatures, inFeatures);
            using var shard = LinearSharding.ShardLinear(layer, strategy, group);
            Assert.Equal(layer.GetType(), shard.GetType());
            if (strategy == ShardStrategy.AllToSharded)
            {
                Assert.Equal((outFeatures / 2, inFeatures), (shard.OutFeatures, shard.InFeatures));
                var slice = new float[Tokens * shard.OutFeatures];
                RunLinear(backend, shard, input, inFeatures, slice);
                return slice;
            }

            Assert.Equal((outFeatures, inFeatures / 2), (shard.OutFeatures, shard.InFeatures));
            Assert.Equal(group.Rank == 0, shard.Bias is not null);
            var inputSlice = new float[Tokens * shard.InFeatures];
            for (var t = 0; t < Tokens; t++)
            {
                input.AsSpan((t * inFeatures) + (group.Rank * shard.InFeatures), shard.InFeatures).CopyTo(inputSlice.AsSpan(t * shard.InFeatures));
            }

            var partial = new float[Tokens * outFeatures];
            RunLinear(backend, shard, inputSlice, shard.InFeatures, partial);
            group.AllSum<float>(partial);
            return partial;
        });

        for (var rank = 0; rank < 2; rank++)
        {
            for (var t = 0; t < Tokens; t++)
            {
                for (var o = 0; o < outFeatures; o++)
                {
                    var actual = strategy == ShardStrategy.AllToSharded
                        ? (o / (outFeatures / 2) == rank ? outputs[rank][(t * outFeatures / 2) + (o % (outFeatures / 2))] : float.NaN)
                        : outputs[rank][(t * outFeatures) + o];
                    if (!float.IsNaN(actual))
                    {
                        Assert.True(Math.Abs(expected[(t * outFeatures) + o] - actual) < 1e-4f, $"rank {rank}, token {t}, output {o}: {actual} vs {expected[(t * outFeatures) + o]}");
                    }
                }
            }
        }
    }

    [Fact]
    public void QuantizedSplitThatCutsAGroupIsRefused()
    {
        var errors = ShardRanks.Run(1, 2, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var layer = MakeLayer(backend, quantized: true, outFeatures: 4, inFeatures: 96);
            return LinearSharding.ShardLinear(layer, ShardStrategy.ShardedToAll, groups.Tensor!);
        });

        foreach (var (_, error) in errors)
        {
            var failure = Assert.IsType<ArgumentException>(error);
            Assert.Contains("96 input features cannot be split evenly over 2 ranks on quantization group boundaries (group size 32)", failure.Message);
        }
    }

    [Fact]
    public void OutputsThatDoNotDivideAreRefused()
    {
        var errors = ShardRanks.Run(1, 2, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var layer = MakeLayer(backend, quantized: false, outFeatures: 7, inFeatures: 32);
            return LinearSharding.ShardLinear(layer, ShardStrategy.AllToSharded, groups.Tensor!);
        });

        foreach (var (_, error) in errors)
        {
            Assert.Contains("7 output features cannot be split evenly over 2 ranks", Assert.IsType<ArgumentException>(error).Message);
        }
    }

    private static LinearWeight MakeLayer(CpuBackend backend, bool quantized, int outFeatures, int inFeatures)
    {
        var bias = Upload(backend, Random(outFeatures, seed: 2), outFeatures);
        if (!quantized)
        {
            return new DenseWeight(Upload(backend, Random(outFeatures * inFeatures, seed: 3), outFeatures, inFeatures), bias);
        }

        // 4-bit codes in groups of 32: every code value shows up, packed eight to a word.
        const int bits = 4;
        const int groupSize = 32;
        var generator = new Random(4);
        var codes = new uint[outFeatures * inFeatures / 8];
        for (var i = 0; i < codes.Length; i++)
        {
            codes[i] = (uint)generator.NextInt64(0, 1L << 32);
        }

        var groups = inFeatures / groupSize;
        return new QuantizedWeight(
            backend.Upload(MemoryMarshal.AsBytes(codes.AsSpan()), DType.U32, outFeatures, inFeatures * bits / 32),
            Upload(backend, Random(outFeatures * groups, seed: 5).Select(s => 0.01f + Math.Abs(s) / 10).ToArray(), outFeatures, groups),
            Upload(backend, Random(outFeatures * groups, seed: 6), outFeatures, groups),
            bits,
            groupSize,
            bias);
    }

    private static void RunLinear(CpuBackend backend, LinearWeight layer, float[] input, int inFeatures, float[] output)
    {
        using var x = Upload(backend, input, input.Length / inFeatures, inFeatures);
        using var y = backend.Allocate(DType.F32, input.Length / inFeatures, layer.OutFeatures);
        backend.Linear(x, layer, y);
        backend.Download(y, MemoryMarshal.AsBytes(output.AsSpan()));
    }

    private static Tensor Upload(CpuBackend backend, float[] values, params int[] shape) =>
        backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, shape);

    private static float[] Random(int count, int seed)
    {
        var generator = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => (float)(generator.NextDouble() - 0.5)).ToArray();
    }
}
