using Granary.Collectives;

namespace Granary.Cli.Launch;

/// <summary>What `granary launch` (and `granary config`'s verification) starts: one command per rank.</summary>
internal static class LaunchPlan
{
    /// <summary><paramref name="count"/> ranks on this machine, meeting at a free loopback port.</summary>
    public static List<RankCommand> Local(int count, int port, IReadOnlyDictionary<string, string> environment, string? workingDirectory, IReadOnlyList<string> command)
    {
        var ranks = new List<RankCommand>();
        for (var rank = 0; rank < count; rank++)
        {
            var variables = RankEnvironment(rank, count, $"127.0.0.1:{port}", environment);
            ranks.Add(new RankCommand(rank, command[0], command.Skip(1).ToArray(), variables, workingDirectory));
        }

        return ranks;
    }

    /// <summary>One rank per hostfile entry; rank 0's first address (or its ssh name) hosts the coordinator.</summary>
    public static List<RankCommand> Hosts(IReadOnlyList<HostEntry> hosts, int port, string? launcherTemplate, IReadOnlyDictionary<string, string> environment, string workingDirectory, IReadOnlyList<string> command)
    {
        var coordinatorHost = hosts[0].Ips.Count > 0 ? hosts[0].Ips[0] : hosts[0].Ssh;
        var coordinator = coordinatorHost.Contains(':', StringComparison.Ordinal) ? $"[{coordinatorHost}]:{port}" : $"{coordinatorHost}:{port}";
        return hosts.Select((host, rank) =>
                RankCommand.ForHost(rank, host.Ssh, launcherTemplate, workingDirectory, RankEnvironment(rank, hosts.Count, coordinator, environment), command))
            .ToList();
    }

    private static Dictionary<string, string> RankEnvironment(int rank, int size, string coordinator, IReadOnlyDictionary<string, string> extra)
    {
        var variables = new Dictionary<string, string>(extra, StringComparer.Ordinal)
        {
            [DistributedEnvironment.Rank] = rank.ToString(System.Globalization.CultureInfo.InvariantCulture),
            [DistributedEnvironment.WorldSize] = size.ToString(System.Globalization.CultureInfo.InvariantCulture),
            [DistributedEnvironment.Coordinator] = coordinator,
        };
        return variables;
    }

    /// <summary>Parses repeated <c>--env K=V</c> values.</summary>
    public static Dictionary<string, string> ParseEnvironment(IEnumerable<string> assignments)
    {
        var variables = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var assignment in assignments)
        {
            var equals = assignment.IndexOf('=', StringComparison.Ordinal);
            if (equals <= 0 || !assignment[..equals].All(c => char.IsAsciiLetterOrDigit(c) || c == '_'))
            {
                throw new UsageException($"--env expects NAME=VALUE, got '{assignment}'.");
            }

            variables[assignment[..equals]] = assignment[(equals + 1)..];
        }

        return variables;
    }

    public static int FreeLoopbackPort()
    {
        using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        return ((System.Net.IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
