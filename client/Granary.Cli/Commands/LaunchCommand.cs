using Granary.Cli.Launch;
using Granary.Collectives;

namespace Granary.Cli.Commands;

/// <summary>`granary launch`: starts one process per rank (locally or over ssh) with the group's environment set.</summary>
internal static class LaunchCommand
{
    public const string Summary = "run a program on every rank: -n N (local) or --hostfile F, then -- CMD...";

    private static readonly string[] ValueOptions = ["-n", "--hostfile", "--env", "--cwd", "--backend", "--port", "--launcher", "--kill-grace-ms", "--timeout-ms"];

    public static Task<int> RunAsync(string[] args)
    {
        if (args is ["-h" or "--help", ..])
        {
            PrintUsage(Console.Out);
            return Task.FromResult(0);
        }

        var parsed = CommandArguments.Parse(args, ValueOptions, []);
        if (parsed.Rest.Length == 0)
        {
            throw new UsageException("nothing to run: give the command after '--'.");
        }

        var environment = LaunchPlan.ParseEnvironment(parsed.GetAll("--env"));
        if (parsed.Get("--backend") is { } backend)
        {
            environment[DistributedEnvironment.Backend] = backend;
        }

        if (parsed.GetIntOrNull("--timeout-ms") is { } timeout)
        {
            environment[DistributedEnvironment.TimeoutMilliseconds] = timeout.ToString(System.Globalization.CultureInfo.InvariantCulture);
        }

        var killGrace = TimeSpan.FromMilliseconds(parsed.GetInt("--kill-grace-ms", 2000));
        var workingDirectory = parsed.Get("--cwd");
        List<RankCommand> ranks;
        if (parsed.Get("--hostfile") is { } hostfile)
        {
            if (parsed.Get("-n") is not null)
            {
                throw new UsageException("give either -n or --hostfile, not both.");
            }

            IReadOnlyList<HostEntry> hosts;
            try
            {
                hosts = Hostfile.Load(hostfile);
            }
            catch (FormatException e)
            {
                throw new UsageException(e.Message);
            }

            var port = parsed.GetInt("--port", CollectiveOptions.DefaultCoordinatorPort);
            ranks = LaunchPlan.Hosts(hosts, port, parsed.Get("--launcher"), environment, workingDirectory ?? Environment.CurrentDirectory, parsed.Rest);
        }
        else
        {
            var count = parsed.GetInt("-n", 0);
            if (count < 1)
            {
                throw new UsageException("give -n N (N ≥ 1) or --hostfile F.");
            }

            if (parsed.Get("--launcher") is not null)
            {
                throw new UsageException("--launcher applies to --hostfile only.");
            }

            ranks = LaunchPlan.Local(count, parsed.GetInt("--port", LaunchPlan.FreeLoopbackPort()), environment, workingDirectory, parsed.Rest);
        }

        return RankProcesses.WithTerminationAsync(cancel => new RankProcesses(Console.Out, Console.Error).RunAsync(ranks, killGrace, cancel));
    }

    private static void PrintUsage(TextWriter writer)
    {
        writer.WriteLine("usage: granary launch (-n N | --hostfile F) [options] -- CMD [ARGS...]");
        writer.WriteLine("  -n N                 start N ranks on this machine");
        writer.WriteLine("  --hostfile F         one rank per host of an MLX hostfile, started over ssh");
        writer.WriteLine("  --env K=V            set a variable for every rank (repeatable)");
        writer.WriteLine("  --cwd DIR            working directory of the ranks (default: the current one)");
        writer.WriteLine("  --backend NAME       GRANARY_BACKEND: auto, tcp, ring, mesh, shm");
        writer.WriteLine("  --port P             coordinator port on rank 0 (default 29500 for hostfiles, a free one for -n)");
        writer.WriteLine($"  --launcher TEMPLATE  how to reach a host (default \"{RankCommand.SshTemplate}\"), e.g. \"ip netns exec {{host}} sh -c {{command}}\"");
        writer.WriteLine("  --kill-grace-ms MS   after a rank fails, how long the others may take to exit before being killed (default 2000)");
        writer.WriteLine("  --timeout-ms MS      GRANARY_TIMEOUT_MS: collective timeout of the ranks");
        writer.WriteLine("Output lines are prefixed with [rank]; the exit code is the worst (highest) of the ranks that were not killed.");
    }
}
