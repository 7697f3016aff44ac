using Granary.Abstractions;
using Granary.Client;
using Granary.Models.BuiltIn;

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

    public Task<ClusterStatus> WaitForStatusAsync(Func<ClusterStatus, bool> condition, TimeSpan timeout) =>
        ClusterWaits.WaitForStatusAsync(Client, condition, timeout, Alpha, Beta);
}
