using System.Diagnostics;
using Granary.Collectives;
using Granary.Models.Sharding;
using Granary.Models.Tests.Reference;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Sharding;

/// <summary>A rank that fails mid-generation ends every other rank with a collective error, within the timeout.</summary>
public sealed class RankFailureTests
{
    [Theory]
    [InlineData(1, 2, "shm")]
    [InlineData(1, 2, "ring")]
    [InlineData(2, 1, "shm")]
    [InlineData(2, 1, "ring")]
    public void RankFailingMidGenerationEndsEveryRank(int stages, int tensorRanks, string backend)
    {
        const int failingRank = 1;
        var reference = ReferenceModel.Load("llama");
        var clock = Stopwatch.StartNew();
        var results = ShardRanks.Run(stages, tensorRanks, groups =>
        {
            using var cpu = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, cpu, groups.Pipeline, groups.Tensor);
            var model = loaded.Model;
            using var cache = model.CreateCache(64);
            var logits = new float[model.Config.VocabularySize];
            model.Forward(reference.PromptIds, cache, logits);
            for (var step = 0; step < 40; step++)
            {
                if (step == 3 && groups.World.Rank == failingRank)
                {
                    throw new InvalidOperationException("rank 1 fails on purpose");
                }

                model.Forward([step + 5], cache, logits);
            }

            return cache.Length;
        }, backend, timeout: TimeSpan.FromSeconds(2));

        Assert.Equal("rank 1 fails on purpose", Assert.IsType<InvalidOperationException>(results[failingRank].Error).Message);
        var error = Assert.IsType<CollectiveException>(results[0].Error);
        Assert.Contains("rank", error.Message);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(30), $"the ranks took {clock.Elapsed} to stop");
    }
}
