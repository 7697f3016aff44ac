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
    private static readonly string Prefix = $"gc{Environment.ProcessId % 100000}";
    private readonly NetworkNamespaces _hosts = new(Prefix, subnet: 231);

    [Fact]
    public void ConfigAndLaunchAcrossNamespacesWithAKilledRank()
    {
        if (!NetworkNamespaces.CanCreate(out var reason))
        {
            log.WriteLine($"SKIPPED: network namespace test needs root and iproute2 ({reason}).");
            return;
        }

        _hosts.Create(3, reachableFromHost: false);
        var hosts = _hosts.Names;
        var hostfile = Path.Combine(Path.GetTempPath(), $"{Prefix}-hosts.json");
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

    public void Dispose() => _hosts.Dispose();
}
