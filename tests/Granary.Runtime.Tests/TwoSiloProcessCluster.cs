using System.Diagnostics;
using Granary.Abstractions;
using Granary.Client;
using Granary.Models.BuiltIn;
using Xunit.Abstractions;

namespace Granary.Runtime.Tests;

/// <summary>
/// Two silo processes, alpha (the primary) and beta, running the built-in model (big enough that a generation takes
/// seconds). The client talks to alpha only, so its coordinators live there; each fixture decides with the silos'
/// arguments (memory offered, layout) which one leads, so its tests can SIGKILL the other.
/// </summary>
public abstract class TwoSiloProcessCluster : IAsyncLifetime
{
    private readonly int[] _ports = SiloProcess.FreePorts(4);

    public string ClusterId { get; } = $"test-{Guid.NewGuid():N}";

    public string Model { get; } = BuiltInModel.EnsureCreated(TextWriter.Null);

    public SiloProcess Alpha { get; private set; } = null!;

    public SiloProcess Beta { get; private set; } = null!;

    public GranaryClient Client { get; private set; } = null!;

    /// <summary>Arguments both silos get: the cluster, localhost membership and alpha as the primary silo.</summary>
    protected string[] Common => ["--cluster-id", ClusterId, "--membership", "localhost", "--primary-silo", $"127.0.0.1:{_ports[0]}"];

    protected abstract string[] AlphaArguments { get; }

    protected abstract string[] BetaArguments { get; }

    public async Task InitializeAsync()
    {
        Alpha = await SiloProcess.StartAsync("alpha", _ports[0], _ports[1], AlphaArguments, TimeSpan.FromSeconds(90));
        await StartBetaAsync();
        Client = await GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = ClusterId;
            options.Gateways = [Alpha.Gateway];
        });
    }

    /// <summary>Starts beta (again, after a test killed it) on its same ports.</summary>
    public async Task StartBetaAsync()
    {
        Beta?.Dispose();
        Beta = await SiloProcess.StartAsync("beta", _ports[2], _ports[3], BetaArguments, TimeSpan.FromSeconds(90));
    }

    public async Task DisposeAsync()
    {
        if (Client is not null)
        {
            await Client.DisposeAsync();
        }

        Beta?.Dispose();
        Alpha?.Dispose();
    }

    /// <summary>
    /// Streams <paramref name="job"/> through alpha and SIGKILLs beta once four tokens have arrived: the stream must
    /// still end with <paramref name="expected"/>, after exactly one failover, with the job's usage counts.
    /// </summary>
    public async Task StreamKillingBetaMidAnswerAsync(GenerationJob job, int[] expected, ITestOutputHelper output, Stopwatch clock)
    {
        var tokens = new List<int>();
        GenerationSummary? summary = null;
        var killedAfter = -1;
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        await foreach (var chunk in Client.StreamAsync(Model, job, deadline.Token))
        {
            if (chunk.HasToken)
            {
                tokens.Add(chunk.TokenId);
            }

            summary = chunk.Summary ?? summary;
            if (killedAfter < 0 && tokens.Count >= 4)
            {
                killedAfter = tokens.Count;
                Beta.Kill();
                output.WriteLine($"{clock.Elapsed}: killed beta after {killedAfter} tokens");
            }
        }

        output.WriteLine($"{clock.Elapsed}: stream finished");
        Assert.True(killedAfter > 0 && killedAfter < job.MaxTokens, $"beta was killed after {killedAfter} tokens");
        Assert.NotNull(summary);
        Assert.Equal(1, summary.Failovers);
        Assert.Equal(expected, tokens);
        Assert.Equal((job.Prompt.TokenIds!.Length, job.MaxTokens), (summary.PromptTokens, summary.GeneratedTokens));
    }

    public Task<ClusterStatus> WaitForStatusAsync(Func<ClusterStatus, bool> condition, TimeSpan timeout) =>
        ClusterWaits.WaitForStatusAsync(Client, condition, timeout, Alpha, Beta);
}
