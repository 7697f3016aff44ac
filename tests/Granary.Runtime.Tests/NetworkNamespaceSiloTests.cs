using System.Diagnostics;
using Granary.Client;
using Granary.Testing;
using Xunit.Abstractions;

namespace Granary.Runtime.Tests;

/// <summary>
/// Two silo processes in their own network namespaces (veth pairs into one bridge, addresses 10.232.x.1 and .2),
/// as two hosts: membership, the client and the shards' TCP data plane all cross the veth links. Needs root and
/// iproute2; otherwise it says why and passes.
/// </summary>
public sealed class NetworkNamespaceSiloTests(ITestOutputHelper log) : IDisposable
{
    private readonly NetworkNamespaces _hosts = new($"gr{Environment.ProcessId % 100000}", subnet: 200 + (Environment.ProcessId % 50));

    [Fact]
    public async Task Silos_in_two_namespaces_split_a_model_over_tcp_and_fail_over_when_one_is_killed()
    {
        if (!NetworkNamespaces.CanCreate(out var reason))
        {
            log.WriteLine($"SKIPPED: network namespace silo test needs root and iproute2 ({reason}).");
            return;
        }

        // The bridge gets an address too, so this process (the client) reaches the silos' gateways.
        _hosts.Create(2, reachableFromHost: true);
        string[] addresses = [_hosts.AddressOf(0), _hosts.AddressOf(1)];
        var clusterId = $"test-{Guid.NewGuid():N}";
        const int SiloPort = 11111;
        const int GatewayPort = 30000;
        string[] common =
        [
            "--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", $"{addresses[0]}:{SiloPort}",
            "--layout", "Tensor", "--max-shards", "2", "--Granary:Coordinator:DataPlaneBackend=tcp",
        ];
        using var alpha = await SiloProcess.StartAsync(
            "alpha", SiloPort, GatewayPort, [.. common, "--advertised-address", addresses[0]], TimeSpan.FromSeconds(90), ["ip", "netns", "exec", _hosts.Names[0]], addresses[0]);
        using var beta = await SiloProcess.StartAsync(
            "beta", SiloPort, GatewayPort, [.. common, "--advertised-address", addresses[1]], TimeSpan.FromSeconds(90), ["ip", "netns", "exec", _hosts.Names[1]], addresses[1]);
        await using var client = await GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = clusterId;
            options.Gateways = [alpha.Gateway];
        });
        await ClusterWaits.WaitForStatusAsync(client, ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60), alpha, beta);

        var plan = await client.LoadModelAsync(TinyModel.Directory);
        Assert.Equal(("tensor", 2), (plan.Layout, plan.ShardCount));
        var group = plan.Group!;
        Assert.Equal("tcp", group.Backend);
        Assert.Equal(addresses.Order(StringComparer.Ordinal), group.Peers.Select(peer => peer.Address).Order(StringComparer.Ordinal));
        var job = TensorParallelFailoverTests.Job(TinyModel.PromptIds, 20);
        Assert.Equal(TinyModel.GreedyTokens, (await client.GenerateAsync(TinyModel.Directory, job)).Tokens);

        // The follower's host disappears; the next generation finds the group broken and finishes on alpha alone.
        beta.Kill();
        var clock = Stopwatch.StartNew();
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        var result = await client.GenerateAsync(TinyModel.Directory, job, deadline.Token);
        log.WriteLine($"generated on the survivor {clock.Elapsed} after the kill");
        Assert.Equal(TinyModel.GreedyTokens, result.Tokens);
        var survivor = await client.LoadModelAsync(TinyModel.Directory);
        Assert.Equal(("single", "alpha"), (survivor.Layout, survivor.Leader.Shard.SiloName));
    }

    public void Dispose() => _hosts.Dispose();
}
