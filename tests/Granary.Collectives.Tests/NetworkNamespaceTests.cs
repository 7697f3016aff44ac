using System.Diagnostics;
using Xunit.Abstractions;
using Granary.Testing;

namespace Granary.Collectives.Tests;

/// <summary>
/// Three network namespaces, each with a veth pair into one bridge, as three "hosts" with their own addresses.
/// Runs `granary config` and `granary launch` across them through `ip netns exec` (there is no ssh server here) and
/// kills one rank to see the error reach the others. Needs root and iproute2; otherwise it says why and passes.
/// </summary>
public sealed class NetworkNamespaceTests(ITestOutputHelper log) : IDisposable
{
    private const string Launcher = "ip netns exec {host} sh -c {command}";
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);

    // Short unique names: interface names are limited to 15 characters.
    private readonly string _prefix = $"gc{Environment.ProcessId % 100000}";
    private readonly List<string> _namespaces = [];
    private string Bridge => $"{_prefix}br";

    [Fact]
    public void ConfigAndLaunchAcrossNamespacesWithAKilledRank()
    {
        if (!CanCreateNamespaces(out var reason))
        {
            log.WriteLine($"SKIPPED: network namespace test needs root and iproute2 ({reason}).");
            return;
        }

        var hosts = CreateHosts(3);
        var hostfile = Path.Combine(Path.GetTempPath(), $"{_prefix}-hosts.json");
        try
        {
            var (exitCode, output, _) = GranaryCli.Run(Limit,
                "config", "--hosts", string.Join(',', hosts), "--output", hostfile, "--backend", "ring", "--launcher", Launcher, "--granary", string.Join(' ', GranaryCli.Command));
            log.WriteLine(output);
            Assert.True(exitCode == 0, output);
            var entries = Hostfile.Load(hostfile);
            Assert.Equal(["10.231.7.1", "10.231.7.2", "10.231.7.3"], entries.Select(e => e.Ips.Single()));
            Assert.Contains("[2] rank 2 of 3: all-sum of 4099 F32 over ring matches the reference", output);

            (exitCode, output, _) = GranaryCli.Run(Limit,
                ["launch", "--hostfile", hostfile, "--launcher", Launcher, "--backend", "tcp", "--", .. GranaryCli.Command, "collectives-check", "--elements", "200003", "--dtype", "bf16"]);
            log.WriteLine(output);
            Assert.True(exitCode == 0, output);
            Assert.Contains("[1] rank 1 of 3: all-sum of 200003 BF16 over tcp matches the reference", output);

            // Rank 2 dies after the first all-sum; ranks 0 and 1 must report the failure, not hang.
            // A long kill grace: the survivors' messages show they failed by themselves rather than being killed.
            (exitCode, output, _) = GranaryCli.Run(Limit,
                ["launch", "--hostfile", hostfile, "--launcher", Launcher, "--backend", "ring", "--timeout-ms", "3000", "--kill-grace-ms", "30000",
                 "--", .. GranaryCli.Command, "collectives-check", "--exit-rank", "2", "--iterations", "3"]);
            log.WriteLine(output);
            Assert.Equal(3, exitCode);
            Assert.Contains("[0] rank 0: collectives check failed: AllReduce", output);
            Assert.Contains("[1] rank 1: collectives check failed: AllReduce", output);
        }
        finally
        {
            File.Delete(hostfile);
        }
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
        Ip($"link add {Bridge} type bridge");
        Ip($"link set {Bridge} up");
        for (var i = 0; i < count; i++)
        {
            var name = $"{_prefix}n{i}";
            _namespaces.Add(name);
            Ip($"netns add {name}");
            Ip($"link add {name}v type veth peer name {name}p");
            Ip($"link set {name}v master {Bridge}");
            Ip($"link set {name}v up");
            Ip($"link set {name}p netns {name}");
            Ip($"-n {name} addr add 10.231.7.{i + 1}/24 dev {name}p");
            Ip($"-n {name} link set {name}p up");
            Ip($"-n {name} link set lo up");
        }

        return _namespaces;
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
