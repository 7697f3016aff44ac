using System.Diagnostics;
using Granary.Client;
using Xunit.Abstractions;

namespace Granary.Runtime.Tests;

/// <summary>
/// Two silo processes in their own network namespaces (veth pairs into one bridge, addresses 10.232.x.1 and .2),
/// as two hosts: membership, the client and the shards' TCP data plane all cross the veth links. Needs root and
/// iproute2; otherwise it says why and passes.
/// </summary>
public sealed class NetworkNamespaceSiloTests(ITestOutputHelper log) : IDisposable
{
    private readonly string _prefix = $"gr{Environment.ProcessId % 100000}";
    private readonly List<string> _namespaces = [];
    private readonly int _subnet = 200 + (Environment.ProcessId % 50);

    private string Bridge => $"{_prefix}br";

    [Fact]
    public async Task Silos_in_two_namespaces_split_a_model_over_tcp_and_fail_over_when_one_is_killed()
    {
        if (!CanCreateNamespaces(out var reason))
        {
            log.WriteLine($"SKIPPED: network namespace silo test needs root and iproute2 ({reason}).");
            return;
        }

        var addresses = CreateHosts(2);
        var clusterId = $"test-{Guid.NewGuid():N}";
        const int SiloPort = 11111;
        const int GatewayPort = 30000;
        string[] common =
        [
            "--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", $"{addresses[0]}:{SiloPort}",
            "--layout", "Tensor", "--max-shards", "2", "--Granary:Coordinator:DataPlaneBackend=tcp",
        ];
        using var alpha = await SiloProcess.StartAsync(
            "alpha", SiloPort, GatewayPort, [.. common, "--advertised-address", addresses[0]], TimeSpan.FromSeconds(90), ["ip", "netns", "exec", _namespaces[0]], addresses[0]);
        using var beta = await SiloProcess.StartAsync(
            "beta", SiloPort, GatewayPort, [.. common, "--advertised-address", addresses[1]], TimeSpan.FromSeconds(90), ["ip", "netns", "exec", _namespaces[1]], addresses[1]);
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

    public void Dispose()
    {
        foreach (var name in _namespaces)
        {
            Ip($"link del {name}v", check: false);
            Ip($"netns del {name}", check: false);
        }

        Ip($"link del {Bridge}", check: false);
    }

    private List<string> CreateHosts(int count)
    {
        // The bridge gets an address too, so this process (the client) reaches the silos' gateways.
        Ip($"link add {Bridge} type bridge");
        Ip($"addr add 10.{_subnet}.7.254/24 dev {Bridge}");
        Ip($"link set {Bridge} up");
        var addresses = new List<string>();
        for (var i = 0; i < count; i++)
        {
            var name = $"{_prefix}n{i}";
            _namespaces.Add(name);
            Ip($"netns add {name}");
            Ip($"link add {name}v type veth peer name {name}p");
            Ip($"link set {name}v master {Bridge}");
            Ip($"link set {name}v up");
            Ip($"link set {name}p netns {name}");
            Ip($"-n {name} addr add 10.{_subnet}.7.{i + 1}/24 dev {name}p");
            Ip($"-n {name} link set {name}p up");
            Ip($"-n {name} link set lo up");
            addresses.Add($"10.{_subnet}.7.{i + 1}");
        }

        return addresses;
    }

    private static bool CanCreateNamespaces(out string reason)
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            reason = "not running as root on Linux";
            return false;
        }

        if (!File.Exists("/usr/sbin/ip") && !File.Exists("/sbin/ip") && !File.Exists("/usr/bin/ip"))
        {
            reason = "the ip command is missing";
            return false;
        }

        reason = "";
        return true;
    }

    private static void Ip(string arguments, bool check = true)
    {
        var info = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var word in arguments.Split(' '))
        {
            info.ArgumentList.Add(word);
        }

        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(TimeSpan.FromSeconds(10)), $"ip {arguments} hung");
        if (check && process.ExitCode != 0)
        {
            throw new InvalidOperationException($"ip {arguments} failed: {error}");
        }
    }
}
