using System.Diagnostics;
using Granary.Abstractions;
using Granary.Client;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Generation;
using Granary.Tensors;
using Xunit.Abstractions;

namespace Granary.Runtime.Tests;

/// <summary>Alpha offers less memory than the built-in model needs, so the plan puts the shard on beta.</summary>
public sealed class BuiltInModelCluster : TwoSiloProcessCluster
{
    public const long AlphaMemoryLimit = 1L << 30;

    protected override string[] AlphaArguments => [.. Common, "--memory-limit", $"{AlphaMemoryLimit}"];

    protected override string[] BetaArguments => Common;
}

public sealed class FailoverTests(BuiltInModelCluster cluster, ITestOutputHelper output) : IClassFixture<BuiltInModelCluster>
{
    private const int MaxTokens = 32;

    [Fact]
    public async Task Killing_the_shards_silo_mid_answer_continues_the_stream_on_the_survivor_with_the_same_greedy_tokens()
    {
        var clock = Stopwatch.StartNew();
        var promptIds = PromptIds();
        var expected = GenerateInProcess(promptIds);
        output.WriteLine($"{clock.Elapsed}: in-process reference done");
        await cluster.WaitForStatusAsync(ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60));
        await cluster.Client.UnloadModelAsync(cluster.Model);
        var plan = await cluster.Client.LoadModelAsync(cluster.Model);
        Assert.Equal("beta", plan.Leader.Shard.SiloName);
        output.WriteLine($"{clock.Elapsed}: loaded on beta");

        await cluster.StreamKillingBetaMidAnswerAsync(Job(promptIds), expected, output, clock);

        var afterKill = await cluster.WaitForStatusAsync(status => status.Silos.Single(silo => silo.SiloName == "beta").Status == "Dead", TimeSpan.FromSeconds(30));
        Assert.Equal("alpha", Assert.Single(afterKill.Models).Leader.Shard.SiloName);

        output.WriteLine($"{clock.Elapsed}: beta declared dead");

        // A silo that comes back is used by the next plan.
        await cluster.StartBetaAsync();
        output.WriteLine($"{clock.Elapsed}: beta restarted");
        await cluster.WaitForStatusAsync(ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60));
        await cluster.Client.UnloadModelAsync(cluster.Model);
        var replanned = await cluster.Client.LoadModelAsync(cluster.Model);
        Assert.Equal("beta", replanned.Leader.Shard.SiloName);
        var again = await cluster.Client.GenerateAsync(cluster.Model, Job(promptIds) with { MaxTokens = 16 });
        Assert.Equal(expected[..16], again.Tokens);
        output.WriteLine($"{clock.Elapsed}: generated on the returned beta");
    }

    [Fact]
    public async Task Cancelling_a_stream_stops_the_generation_on_its_silo()
    {
        await cluster.WaitForStatusAsync(ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60));
        using var cancel = new CancellationTokenSource();
        var received = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (var chunk in cluster.Client.StreamAsync(cluster.Model, Job(PromptIds()) with { MaxTokens = 2000 }, cancel.Token))
            {
                if (chunk.HasToken && ++received == 3)
                {
                    await cancel.CancelAsync();
                }
            }
        });
        Assert.Equal(3, received);
        await cluster.WaitForStatusAsync(status => status.Silos.All(silo => silo.Host is null || silo.Host.Work.Length == 0), TimeSpan.FromSeconds(20));
    }

    private static GenerationJob Job(int[] promptIds) => new()
    {
        Prompt = Abstractions.Prompt.FromTokenIds(promptIds),
        MaxTokens = MaxTokens,
        Sampling = SamplingSettings.Greedy,
        StopAtEndOfSequence = false,
    };

    private int[] PromptIds()
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(cluster.Model, backend);
        return [.. loaded.Tokenizer!.Encode("Tell me about the harvest.", addSpecialTokens: true)];
    }

    private int[] GenerateInProcess(int[] promptIds)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(cluster.Model, backend);
        var request = new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = MaxTokens,
            Sampling = SamplingOptions.Greedy,
            StopAtEndOfSequence = false,
        };
        return [.. new TextGenerator(loaded.Model, loaded.Tokenizer).Generate(request).Where(token => token.HasToken).Select(token => token.Id)];
    }
}
