using System.Net;
using System.Net.Sockets;
using Granary.Testing;

namespace Granary.Collectives.Tests;

/// <summary>Multi-process tests: `granary launch` starting real rank processes on loopback.</summary>
public class LaunchTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(120);

    [Theory]
    [InlineData("tcp", "f32", 3)]
    [InlineData("ring", "bf16", 3)]
    [InlineData("shm", "f16", 3)]
    [InlineData("mesh", "i32", 2)]
    public void LaunchedRanksAllSumCorrectly(string backend, string dtype, int ranks)
    {
        var (exitCode, output, _) = GranaryCli.Run(Limit, ["launch", "-n", ranks.ToString(), "--backend", backend, "--", .. GranaryCli.Command, "collectives-check", "--dtype", dtype, "--elements", "30011"]);
        Assert.True(exitCode == 0, output);
        for (var rank = 0; rank < ranks; rank++)
        {
            Assert.Contains($"[{rank}] rank {rank} of {ranks}: all-sum of 30011 {dtype.ToUpperInvariant()} over {backend} matches the reference", output);
        }
    }

    [Fact]
    public void RankThatDiesFailsTheJobAndTheOthersReportIt()
    {
        // The grace is long: the survivors' own error messages prove they failed by themselves, before any kill.
        var (exitCode, output, _) = GranaryCli.Run(Limit,
            ["launch", "-n", "3", "--backend", "ring", "--timeout-ms", "3000", "--kill-grace-ms", "30000", "--", .. GranaryCli.Command, "collectives-check", "--exit-rank", "1", "--iterations", "3"]);
        Assert.Equal(3, exitCode);
        Assert.Contains("[1] rank 1: exiting on purpose", output);
        Assert.Contains("[0] rank 0: collectives check failed: AllReduce", output);
        Assert.Contains("[2] rank 2: collectives check failed: AllReduce", output);

    }

    [Fact]
    public void EnvironmentWorkingDirectoryAndRankPrefixReachEveryRank()
    {
        var directory = Directory.CreateTempSubdirectory("granary-launch-").FullName;
        try
        {
            var (exitCode, output, _) = GranaryCli.Run(Limit,
                "launch", "-n", "2", "--env", "GREETING=hello world", "--cwd", directory, "--", "sh", "-c", "echo \"$GRANARY_RANK/$GRANARY_WORLD_SIZE $GREETING $(pwd)\"");
            Assert.True(exitCode == 0, output);
            Assert.Contains($"[0] 0/2 hello world {directory}", output);
            Assert.Contains($"[1] 1/2 hello world {directory}", output);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void FailingRankGivesTheExitCodeAndTheRestAreKilled()
    {
        var (exitCode, output, elapsed) = GranaryCli.Run(Limit,
            "launch", "-n", "3", "--kill-grace-ms", "200", "--", "sh", "-c", "if [ $GRANARY_RANK = 2 ]; then exit 5; fi; sleep 100");
        Assert.Equal(5, exitCode);
        Assert.Contains("rank 2 exited with code 5", output);
        Assert.True(elapsed < TimeSpan.FromSeconds(60), $"the sleeping ranks were not killed: {elapsed}");
    }

    [Fact]
    public void HostfileLaunchRunsThroughTheLauncherTemplate()
    {
        var hostfile = Path.GetTempFileName();
        try
        {
            // Host names that are not this machine, reached through a template instead of ssh.
            File.WriteAllText(hostfile, """[{"ssh": "node-a", "ips": ["127.0.0.1"]}, {"ssh": "node-b", "ips": ["127.0.0.1"]}, {"ssh": "node-c", "ips": ["127.0.0.1"]}]""");
            var (exitCode, output, _) = GranaryCli.Run(Limit,
                ["launch", "--hostfile", hostfile, "--port", RankHarness.FreePort().ToString(), "--launcher", "env VIA={host} sh -c {command}", "--backend", "ring",
                 "--", .. GranaryCli.Command, "collectives-check"]);
            Assert.True(exitCode == 0, output);
            Assert.Contains("[2] rank 2 of 3: all-sum of 4099 F32 over ring matches the reference", output);

            (exitCode, output, _) = GranaryCli.Run(Limit, "launch", "--hostfile", hostfile, "--launcher", "env VIA={host} sh -c {command}", "--", "sh", "-c", "echo $VIA");
            Assert.True(exitCode == 0, output);
            Assert.Contains("[1] node-b", output);
        }
        finally
        {
            File.Delete(hostfile);
        }
    }

    [Fact]
    public void BadHostfileIsAUsageErrorNamingTheField()
    {
        var hostfile = Path.GetTempFileName();
        try
        {
            File.WriteAllText(hostfile, """[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": [42]}]""");
            var (exitCode, output, _) = GranaryCli.Run(Limit, "launch", "--hostfile", hostfile, "--", "true");
            Assert.Equal(2, exitCode);
            Assert.Contains("host 1: field \"ips\" must hold strings", output);
        }
        finally
        {
            File.Delete(hostfile);
        }
    }

    [Fact]
    public void ConfigProbesWritesAndVerifiesAHostfile()
    {
        var hostfile = Path.Combine(Path.GetTempPath(), $"granary-config-{Guid.NewGuid():N}.json");
        try
        {
            var (exitCode, output, _) = GranaryCli.Run(Limit,
                "config", "--hosts", "localhost,localhost,localhost", "--output", hostfile, "--port", RankHarness.FreePort().ToString(), "--granary", string.Join(' ', GranaryCli.Command));
            Assert.True(exitCode == 0, output);
            Assert.Contains("backend shm", output);
            Assert.Contains("[2] rank 2 of 3: all-sum of 4099 F32 over shm matches the reference", output);
            Assert.Contains("OK:", output);
            var hosts = Hostfile.Load(hostfile);
            Assert.Equal(3, hosts.Count);
            Assert.All(hosts, h => Assert.Equal(["127.0.0.1"], h.Ips));
        }
        finally
        {
            File.Delete(hostfile);
        }
    }

    [Fact]
    public void ConfigReportsAPortInUseAndAnUnreachableHost()
    {
        using var squatter = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        squatter.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        squatter.Listen();
        var port = ((IPEndPoint)squatter.LocalEndPoint!).Port;
        var hostfile = Path.Combine(Path.GetTempPath(), $"granary-config-{Guid.NewGuid():N}.json");

        var (exitCode, output, _) = GranaryCli.Run(Limit, "config", "--hosts", "localhost,localhost", "--output", hostfile, "--port", port.ToString());
        Assert.Equal(1, exitCode);
        Assert.Contains($"port {port} is in use on localhost", output);

        (exitCode, output, _) = GranaryCli.Run(Limit, "config", "--hosts", "node-x,node-y", "--output", hostfile, "--launcher", "false {host} {command}");
        Assert.Equal(1, exitCode);
        Assert.Contains("is unreachable", output);
        Assert.False(File.Exists(hostfile));
    }
}
