using Granary.Abstractions;
using Orleans.Core.Internal;

namespace Granary.Runtime.Tests;

[Collection(InProcessClusterCollection.Name)]
public sealed class CoordinatorTests(InProcessCluster fixture)
{
    private IGrainFactory Grains => fixture.Cluster.GrainFactory;

    [Fact]
    public async Task Plans_the_whole_model_on_one_live_silo_and_streams_the_engines_greedy_tokens()
    {
        var model = TinyModel.Directory;
        var coordinator = Grains.GetGrain<ICoordinatorGrain>(model);
        var plan = await coordinator.LoadAsync();
        try
        {
            var stage = Assert.Single(plan.Stages);
            var shard = Assert.Single(stage.TensorGroup);
            Assert.Equal((0, 3, 3), (stage.FirstLayer, stage.LayerCount, plan.LayerCount));
            Assert.Equal((0, 1, 0, 1), (shard.PipelineStage, shard.PipelineStageCount, shard.TensorRank, shard.TensorGroupSize));
            Assert.Contains(shard.Shard.SiloName, fixture.SiloNames);
            Assert.NotNull(fixture.ModelHostOf(shard.Shard.SiloName).Find(shard.Shard));

            // A live plan is kept, not made again.
            Assert.Equal(plan.Version, (await coordinator.LoadAsync()).Version);

            var tokens = await GenerateAsync(coordinator, TinyModel.PromptIds, 20);
            Assert.Equal(TinyModel.GreedyTokens, tokens);
            Assert.Equal(TinyModel.GenerateInProcess(TinyModel.PromptIds, 20), tokens);
        }
        finally
        {
            await coordinator.UnloadAsync();
        }
    }

    [Fact]
    public async Task A_reactivated_shard_grain_finds_its_weights_still_loaded()
    {
        var model = TinyModel.Directory + "/";
        var coordinator = Grains.GetGrain<ICoordinatorGrain>(model);
        var plan = await coordinator.LoadAsync();
        try
        {
            var host = fixture.ModelHostOf(plan.Leader.Shard.SiloName);
            var loads = host.ModelLoads;
            var shard = Grains.GetGrain<IShardGrain>(plan.Leader.Shard.ToGrainKey());
            await shard.Cast<IGrainManagementExtension>().DeactivateOnIdle();
            await Task.Delay(TimeSpan.FromMilliseconds(200));

            var tokens = await GenerateAsync(coordinator, TinyModel.PromptIds, 8);
            Assert.Equal(TinyModel.GreedyTokens[..8], tokens);
            Assert.Equal(loads, host.ModelLoads);
        }
        finally
        {
            await coordinator.UnloadAsync();
        }
    }

    [Fact]
    public async Task A_model_no_silo_has_is_a_clear_error()
    {
        var coordinator = Grains.GetGrain<ICoordinatorGrain>(Path.Combine(Path.GetTempPath(), "granary-no-such-model"));
        var error = await Assert.ThrowsAsync<InsufficientClusterCapacityException>(() => coordinator.LoadAsync());
        foreach (var siloName in fixture.SiloNames)
        {
            Assert.Contains($"silo '{siloName}' cannot load it", error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Status_shows_every_silo_with_its_backend_shards_and_the_loaded_plan()
    {
        var model = TinyModel.Directory + "//";
        var coordinator = Grains.GetGrain<ICoordinatorGrain>(model);
        var plan = await coordinator.LoadAsync();
        try
        {
            var status = await Grains.GetGrain<IClusterStatusGrain>(0).GetStatusAsync();
            Assert.Equal(fixture.SiloNames.Order(StringComparer.Ordinal), status.Silos.Select(silo => silo.SiloName));
            foreach (var silo in status.Silos)
            {
                Assert.Equal("Active", silo.Status);
                Assert.NotNull(silo.Host);
                Assert.Equal("cpu", silo.Host.Backend);
                Assert.True(silo.Host.Memory.AvailableBytes > 0);
                var holdsShard = silo.Host.Shards.Any(shard => shard.Assignment.Shard == plan.Leader.Shard);
                Assert.Equal(silo.SiloName == plan.Leader.Shard.SiloName, holdsShard);
            }

            var shown = Assert.Single(status.Models, shown => shown.Model == model);
            Assert.Equal(plan.Version, shown.Version);
        }
        finally
        {
            await coordinator.UnloadAsync();
        }

        var after = await Grains.GetGrain<IClusterStatusGrain>(0).GetStatusAsync();
        Assert.DoesNotContain(after.Silos.SelectMany(silo => silo.Host!.Shards), shard => shard.Assignment.Shard.Model == model);
    }

    private static async Task<int[]> GenerateAsync(ICoordinatorGrain coordinator, int[] promptIds, int maxTokens)
    {
        var job = new GenerationJob
        {
            Prompt = Prompt.FromTokenIds(promptIds),
            MaxTokens = maxTokens,
            Sampling = SamplingSettings.Greedy,
            StopAtEndOfSequence = false,
        };
        var tokens = new List<int>();
        GenerationSummary? summary = null;
        await foreach (var chunk in coordinator.GenerateAsync(job))
        {
            if (chunk.HasToken)
            {
                tokens.Add(chunk.TokenId);
            }

            summary = chunk.Summary ?? summary;
        }

        Assert.NotNull(summary);
        Assert.Equal((promptIds.Length, tokens.Count, FinishReason.Length), (summary.PromptTokens, summary.GeneratedTokens, summary.FinishReason));
        return [.. tokens];
    }
}
