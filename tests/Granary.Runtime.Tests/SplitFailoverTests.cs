using System.Diagnostics;
using Granary.Abstractions;
using Granary.Client;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Generation;
using Granary.Tensors;
using Xunit.Abstractions;

namespace Granary.Runtime.Tests;

/// <summary>
/// Both silos' coordinators split every model tensor parallel; alpha offers more memory, so it leads (rank 0) and beta
/// follows: the tests SIGKILL beta mid-answer.
/// </summary>
public sealed class TensorParallelProcessCluster : TwoSiloProcessCluster
{
    protected override string[] AlphaArguments => [.. Common, .. TensorLayout, "--memory-limit", $"{3L << 29}"];

    protected override string[] BetaArguments => [.. Common, .. TensorLayout, "--memory-limit", $"{1L << 30}"];

    private static string[] TensorLayout => ["--layout", "Tensor", "--max-shards", "2"];
}

public sealed class TensorParallelFailoverTests(TensorParallelProcessCluster cluster, ITestOutputHelper output) : IClassFixture<TensorParallelProcessCluster>
{
    private const int MaxTokens = 32;

    [Fact]
    public async Task Killing_a_silo_of_a_tensor_parallel_plan_mid_answer_finishes_on_the_survivor_with_the_same_greedy_tokens_and_the_silo_rejoins()
    {
        var clock = Stopwatch.StartNew();
        var promptIds = Encode(cluster.Model, "Tell me about the harvest.");
        var expected = GenerateInProcess(cluster.Model, promptIds, MaxTokens);
        await cluster.WaitForStatusAsync(ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60));
        var plan = await cluster.Client.LoadModelAsync(cluster.Model);
        Assert.Equal("tensor", plan.Layout);
        Assert.Equal(["alpha", "beta"], plan.Shards.Select(shard => shard.Shard.SiloName));
        output.WriteLine($"{clock.Elapsed}: loaded tensor parallel on alpha and beta");

        // Without a failure the split model gives the single-process tokens.
        var clean = await cluster.Client.GenerateAsync(cluster.Model, Job(promptIds, 12));
        Assert.Equal(expected[..12], clean.Tokens);
        output.WriteLine($"{clock.Elapsed}: clean run {clean.Summary.GenerationTokensPerSecond:F1} tokens/s");

        await cluster.StreamKillingBetaMidAnswerAsync(Job(promptIds, MaxTokens), expected, output, clock);

        var afterKill = await cluster.WaitForStatusAsync(status => status.Silos.Single(silo => silo.SiloName == "beta").Status == "Dead", TimeSpan.FromSeconds(30));
        var survivorPlan = Assert.Single(afterKill.Models);
        Assert.Equal(("single", "alpha"), (survivorPlan.Layout, survivorPlan.Leader.Shard.SiloName));
        output.WriteLine($"{clock.Elapsed}: beta declared dead");

        // A silo that comes back is used by the next plan: the split is widened again.
        await cluster.StartBetaAsync();
        await cluster.WaitForStatusAsync(ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60));
        output.WriteLine($"{clock.Elapsed}: beta rejoined");
        var widened = await cluster.Client.LoadModelAsync(cluster.Model);
        Assert.Equal(("tensor", 2), (widened.Layout, widened.ShardCount));
        Assert.Contains("beta", widened.Shards.Select(shard => shard.Shard.SiloName));
        var again = await cluster.Client.GenerateAsync(cluster.Model, Job(promptIds, 16));
        Assert.Equal(expected[..16], again.Tokens);
        output.WriteLine($"{clock.Elapsed}: generated on alpha and the returned beta");
    }

    internal static GenerationJob Job(int[] promptIds, int maxTokens) => new()
    {
        Prompt = Abstractions.Prompt.FromTokenIds(promptIds),
        MaxTokens = maxTokens,
        Sampling = SamplingSettings.Greedy,
        StopAtEndOfSequence = false,
    };

    internal static int[] Encode(string model, string text)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(model, backend);
        return [.. loaded.Tokenizer!.Encode(text, addSpecialTokens: true)];
    }

    internal static int[] GenerateInProcess(string model, int[] promptIds, int maxTokens)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(model, backend);
        var request = new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = maxTokens,
            Sampling = SamplingOptions.Greedy,
            StopAtEndOfSequence = false,
        };
        return [.. new TextGenerator(loaded.Model, loaded.Tokenizer).Generate(request).Where(token => token.HasToken).Select(token => token.Id)];
    }
}

/// <summary>
/// Two silo processes neither of which can hold the tiny model alone (their memory limits are below what it needs),
/// so the plan splits it; once one is killed, the survivor cannot hold it and generation must fail with a clear
/// error within the failover timeout instead of hanging.
/// </summary>
public sealed class TooSmallSurvivorTests
{
    [Fact]
    public async Task When_the_survivors_cannot_hold_a_split_model_generation_fails_with_a_clear_error()
    {
        var weights = Directory.EnumerateFiles(TinyModel.Directory, "*.safetensors").Sum(path => new FileInfo(path).Length);
        var limit = (long)(weights * 1.25 * 0.7);
        var clusterId = $"test-{Guid.NewGuid():N}";
        var ports = SiloProcess.FreePorts(4);
        string[] common =
        [
            "--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", $"127.0.0.1:{ports[0]}",
            "--memory-limit", $"{limit}", "--failover-timeout", "00:00:05",
        ];
        using var alpha = await SiloProcess.StartAsync("alpha", ports[0], ports[1], common, TimeSpan.FromSeconds(90));
        using var beta = await SiloProcess.StartAsync("beta", ports[2], ports[3], common, TimeSpan.FromSeconds(90));
        await using var client = await GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = clusterId;
            options.Gateways = [alpha.Gateway];
        });
        await ClusterWaits.WaitForStatusAsync(client, ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60), alpha, beta);

        var plan = await client.LoadModelAsync(TinyModel.Directory);
        Assert.Equal(("tensor", 2), (plan.Layout, plan.ShardCount));
        var job = TensorParallelFailoverTests.Job(TinyModel.PromptIds, 20);
        Assert.Equal(TinyModel.GreedyTokens, (await client.GenerateAsync(TinyModel.Directory, job)).Tokens);

        var victim = plan.Shards.Select(shard => shard.Shard.SiloName).Contains("beta") ? beta : alpha;
        Assert.Same(beta, victim);
        beta.Kill();
        var clock = Stopwatch.StartNew();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        var error = await Assert.ThrowsAsync<InsufficientClusterCapacityException>(() => client.GenerateAsync(TinyModel.Directory, job, deadline.Token));
        Assert.Contains("silo 'alpha' offers", error.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(60), $"The error took {clock.Elapsed}.");
    }
}

internal static class ClusterWaits
{
    public static Func<ClusterStatus, bool> ActiveSilos(int count) =>
        status => status.Silos.Count(silo => silo.Status == "Active" && silo.Host is not null) == count;

    public static async Task<ClusterStatus> WaitForStatusAsync(GranaryClient client, Func<ClusterStatus, bool> condition, TimeSpan timeout, params SiloProcess[] silos)
    {
        var clock = Stopwatch.StartNew();
        while (true)
        {
            var status = await client.StatusAsync();
            if (condition(status))
            {
                return status;
            }

            if (clock.Elapsed > timeout)
            {
                throw new TimeoutException($"Status did not settle within {timeout}: {string.Join(", ", status.Silos.Select(s => $"{s.SiloName}={s.Status}"))}\n" +
                    string.Join("\n", silos.Select(silo => $"--- {silo.Name}\n{silo.Output}")));
            }

            await Task.Delay(250);
        }
    }
}
