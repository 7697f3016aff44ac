using Granary.Abstractions;
using Granary.Grains;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Granary.Runtime.Tests;

/// <summary>A two-silo in-process cluster whose coordinators split every model with the layout <typeparamref name="TLayout"/> names.</summary>
public abstract class SplitCluster<TLayout> : TwoInProcessSilos<SplitCluster<TLayout>.Configurator>
    where TLayout : ILayoutChoice
{
    public sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) => siloBuilder.AddGranary(
            modelHost => modelHost.Threads = 1,
            coordinator =>
            {
                coordinator.Layout = TLayout.Layout;
                coordinator.DataPlaneBackend = "tcp";
            });
    }
}

public interface ILayoutChoice
{
    static abstract ShardLayout Layout { get; }
}

public sealed class TensorLayout : ILayoutChoice
{
    public static ShardLayout Layout => ShardLayout.Tensor;
}

public sealed class PipelineLayout : ILayoutChoice
{
    public static ShardLayout Layout => ShardLayout.Pipeline;
}

public sealed class TensorCluster : SplitCluster<TensorLayout>;

public sealed class PipelineCluster : SplitCluster<PipelineLayout>;

/// <summary>The tiny model split over two in-process silos: the tokens must be the single-process engine's.</summary>
public sealed class TensorParallelTests(TensorCluster fixture) : IClassFixture<TensorCluster>
{
    [Fact]
    public async Task A_tensor_parallel_plan_over_two_silos_streams_the_single_process_greedy_tokens()
    {
        var coordinator = fixture.Cluster.GrainFactory.GetGrain<ICoordinatorGrain>(TinyModel.Directory);
        var plan = await coordinator.LoadAsync();
        try
        {
            Assert.Equal("tensor", plan.Layout);
            var stage = Assert.Single(plan.Stages);
            Assert.Equal(fixture.SiloNames.Order(StringComparer.Ordinal), stage.TensorGroup.Select(shard => shard.Shard.SiloName).Order(StringComparer.Ordinal));
            Assert.Equal([(0, 2), (1, 2)], stage.TensorGroup.Select(shard => (shard.TensorRank, shard.TensorGroupSize)));
            var group = Assert.IsType<ShardGroup>(plan.Group);
            Assert.Equal(2, group.Peers.Select(peer => peer.ToString()).Distinct().Count());

            // Each silo holds its half of the split weights (the embedding and norms are whole on both).
            var held = stage.TensorGroup.Select(shard => fixture.ModelHostOf(shard.Shard.SiloName).Find(shard.Shard)!.WeightBytes).ToList();
            var whole = Directory.EnumerateFiles(TinyModel.Directory, "*.safetensors").Sum(path => new FileInfo(path).Length);
            Assert.All(held, bytes => Assert.InRange(bytes, whole / 4, whole * 3 / 4));

            var expected = TinyModel.GenerateInProcess(TinyModel.PromptIds, 20);
            Assert.Equal(expected, await SplitRuns.GenerateAsync(coordinator, TinyModel.PromptIds, 20));
            // The group stays usable across generations, and concurrent ones move through both shards as one batch.
            Assert.Equal(expected[..8], await SplitRuns.GenerateAsync(coordinator, TinyModel.PromptIds, 8));
            await SplitRuns.AssertConcurrentGenerationsShareStepsAsync(coordinator, plan, fixture.ModelHostOf);
        }
        finally
        {
            await coordinator.UnloadAsync();
        }
    }
}

public sealed class PipelineParallelTests(PipelineCluster fixture) : IClassFixture<PipelineCluster>
{
    [Fact]
    public async Task A_pipeline_plan_over_two_silos_streams_the_single_process_greedy_tokens()
    {
        var coordinator = fixture.Cluster.GrainFactory.GetGrain<ICoordinatorGrain>(TinyModel.Directory);
        var plan = await coordinator.LoadAsync();
        try
        {
            Assert.Equal("pipeline", plan.Layout);
            Assert.Equal(2, plan.Stages.Length);
            Assert.Equal(0, plan.Stages[0].FirstLayer);
            Assert.Equal(plan.Stages[0].LayerCount, plan.Stages[1].FirstLayer);
            Assert.Equal(3, plan.Stages.Sum(stage => stage.LayerCount));
            Assert.NotEqual(plan.Stages[0].TensorGroup[0].Shard.SiloName, plan.Stages[1].TensorGroup[0].Shard.SiloName);

            Assert.Equal(TinyModel.GenerateInProcess(TinyModel.PromptIds, 20), await SplitRuns.GenerateAsync(coordinator, TinyModel.PromptIds, 20));
            await SplitRuns.AssertConcurrentGenerationsShareStepsAsync(coordinator, plan, fixture.ModelHostOf);
        }
        finally
        {
            await coordinator.UnloadAsync();
        }
    }
}

internal static class SplitRuns
{
    /// <summary>
    /// Four generations of different prompts and lengths at once: each streams the single-process tokens, and the
    /// leader's engine ran fewer steps than tokens, so some of them shared batched passes through every shard.
    /// </summary>
    public static async Task AssertConcurrentGenerationsShareStepsAsync(ICoordinatorGrain coordinator, ModelPlan plan, Func<string, ModelHost> hostOf)
    {
        int[][] prompts = [TinyModel.PromptIds, TinyModel.PromptIds[..3], [.. TinyModel.PromptIds.Reverse()], [.. TinyModel.PromptIds, .. TinyModel.PromptIds]];
        int[] lengths = [64, 48, 56, 40];
        var leader = hostOf(plan.Leader.Shard.SiloName).Find(plan.Leader.Shard)!;
        var before = leader.ToStatus().Batching!;
        var runs = await Task.WhenAll(prompts.Select((prompt, i) => GenerateAsync(coordinator, prompt, lengths[i])));
        for (var i = 0; i < prompts.Length; i++)
        {
            Assert.Equal(TinyModel.GenerateInProcess(prompts[i], lengths[i]), runs[i]);
        }

        var after = leader.ToStatus().Batching!;
        var steps = after.Steps - before.Steps;
        Assert.Equal(lengths.Sum(), after.GeneratedTokens - before.GeneratedTokens);
        // One at a time, every step yields one token. How many steps overlap depends on when the four requests reach
        // the leader (a loaded machine staggers them by tens of milliseconds), so only some sharing is required.
        Assert.True(steps < lengths.Sum(), $"{steps} steps for {lengths.Sum()} tokens: the generations did not share batched steps");
    }

    public static async Task<int[]> GenerateAsync(ICoordinatorGrain coordinator, int[] promptIds, int maxTokens)
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
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        await foreach (var chunk in coordinator.GenerateAsync(job, deadline.Token))
        {
            if (chunk.HasToken)
            {
                tokens.Add(chunk.TokenId);
            }

            summary = chunk.Summary ?? summary;
        }

        Assert.NotNull(summary);
        Assert.Equal((promptIds.Length, tokens.Count, FinishReason.Length, 0), (summary.PromptTokens, summary.GeneratedTokens, summary.FinishReason, summary.Failovers));
        return [.. tokens];
    }
}
