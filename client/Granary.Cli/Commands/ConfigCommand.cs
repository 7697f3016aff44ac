using Granary.Cli.Launch;
using Granary.Collectives;

namespace Granary.Cli.Commands;

/// <summary>
/// `granary config`: probes the hosts, picks a backend, writes an MLX hostfile and proves it works with an all-sum
/// across the hosts (the same `granary launch` path a real job takes).
/// </summary>
internal static class ConfigCommand
{
    public const string Summary = "probe hosts, write a hostfile and verify it: --hosts a,b,c --output F";

    private static readonly string[] ValueOptions = ["--hosts", "--output", "--backend", "--env", "--port", "--launcher", "--granary", "--probe-timeout-ms"];
    private static readonly string[] FlagOptions = ["--auto-setup"];
    private static readonly string[] Backends = ["ring", "mesh", "shm", "tcp"];

    public static Task<int> RunAsync(string[] args)
    {
        if (args is ["-h" or "--help", ..])
        {
            PrintUsage(Console.Out);
            return Task.FromResult(0);
        }

        var parsed = CommandArguments.Parse(args, ValueOptions, FlagOptions);
        var hosts = (parsed.Get("--hosts") ?? throw new UsageException("--hosts a,b,c is required."))
            .Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var output = parsed.Get("--output") ?? throw new UsageException("--output FILE is required.");
        var backend = parsed.Get("--backend");
        if (backend is not null && !Backends.Contains(backend))
        {
            throw new UsageException($"--backend must be one of {string.Join(", ", Backends)}, got '{backend}'.");
        }

        if (hosts.Length == 0)
        {
            throw new UsageException("--hosts lists no host.");
        }

        var settings = new Settings(
            hosts,
            output,
            backend,
            LaunchPlan.ParseEnvironment(parsed.GetAll("--env")),
            parsed.GetInt("--port", CollectiveOptions.DefaultCoordinatorPort),
            parsed.Get("--launcher"),
            parsed.Get("--granary")?.Split(' ', StringSplitOptions.RemoveEmptyEntries) ?? ThisProgram(),
            TimeSpan.FromMilliseconds(parsed.GetInt("--probe-timeout-ms", 15000)),
            parsed.Has("--auto-setup"));
        return RankProcesses.WithTerminationAsync(cancel => RunAsync(settings, cancel));
    }

    private sealed record Settings(
        string[] Hosts,
        string Output,
        string? Backend,
        Dictionary<string, string> Environment,
        int Port,
        string? Launcher,
        string[] Granary,
        TimeSpan ProbeTimeout,
        bool AutoSetup);

    private static async Task<int> RunAsync(Settings settings, CancellationToken cancel)
    {
        if (settings.AutoSetup)
        {
            var warnings = await Task.WhenAll(settings.Hosts.Distinct().Select(h =>
                HostProbe.AutoSetupAsync(h, settings.Launcher, new CollectiveOptions().SocketBufferBytes, settings.ProbeTimeout, cancel)));
            foreach (var warning in warnings.OfType<string>())
            {
                Console.Error.WriteLine($"granary config: warning: {warning}");
            }
        }

        HostReport[] reports;
        try
        {
            reports = await Task.WhenAll(settings.Hosts.Select(h => HostProbe.ProbeAsync(h, settings.Launcher, settings.Port, settings.ProbeTimeout, cancel)));
        }
        catch (HostUnreachableException e)
        {
            Console.Error.WriteLine($"granary config: {e.Message}");
            return 1;
        }

        foreach (var report in reports)
        {
            Console.WriteLine(
                $"{report.Host}: addresses {(report.Addresses.Count > 0 ? string.Join(", ", report.Addresses) : "none")}, clock skew {report.ClockSkewSeconds:+0.000;-0.000} s");
            if (Math.Abs(report.ClockSkewSeconds) > 1)
            {
                Console.Error.WriteLine($"granary config: warning: {report.Host}'s clock is off by {report.ClockSkewSeconds:0.0} s; timeouts and logs will be confusing.");
            }
        }

        if (reports[0].PortInUse)
        {
            Console.Error.WriteLine($"granary config: port {settings.Port} is in use on {reports[0].Host} (rank 0, the coordinator); choose another with --port.");
            return 1;
        }

        var missing = reports.Where(r => r.Addresses.Count == 0).Select(r => r.Host).ToArray();
        if (missing.Length > 0)
        {
            Console.Error.WriteLine($"granary config: no IPv4 address found on {string.Join(", ", missing)}.");
            return 1;
        }

        var backend = settings.Backend ?? ChooseBackend(reports);
        if (backend == "shm" && reports.Any(r => r.MachineId != reports[0].MachineId))
        {
            Console.Error.WriteLine("granary config: the shm backend needs every host to be the same machine.");
            return 1;
        }

        var entries = reports.Select(r => new HostEntry(r.Host, r.Addresses)).ToList();
        Hostfile.Save(settings.Output, entries);
        Console.WriteLine($"wrote {settings.Output} ({entries.Count} hosts); backend {backend}. Verifying with an all-sum...");

        var environment = new Dictionary<string, string>(settings.Environment)
        {
            [DistributedEnvironment.Backend] = backend,
            [DistributedEnvironment.ConnectTimeoutMilliseconds] = ((int)settings.ProbeTimeout.TotalMilliseconds).ToString(System.Globalization.CultureInfo.InvariantCulture),
        };
        var ranks = LaunchPlan.Hosts(entries, settings.Port, settings.Launcher, environment, "/", [.. settings.Granary, "collectives-check"]);
        var exitCode = await new RankProcesses(Console.Out, Console.Error).RunAsync(ranks, TimeSpan.FromSeconds(1), cancel);
        if (exitCode != 0)
        {
            Console.Error.WriteLine($"granary config: the all-sum across the hosts failed (exit code {exitCode}); {settings.Output} is written but not verified.");
            return exitCode;
        }

        Console.WriteLine($"OK: {settings.Output} verified with an all-sum over {entries.Count} hosts. Run jobs with: granary launch --hostfile {settings.Output} --backend {backend} -- CMD");
        return 0;
    }

    /// <summary>
    /// One machine: shared memory. Two hosts: mesh (each rank sends its buffer once, in one step). More: ring, whose
    /// traffic per rank stays flat as hosts are added; `tcp` (mesh for small, ring for large messages) is the other choice.
    /// </summary>
    internal static string ChooseBackend(IReadOnlyList<HostReport> reports) =>
        reports.All(r => r.MachineId == reports[0].MachineId) ? "shm"
        : reports.Count == 2 ? "mesh"
        : "ring";

    /// <summary>How to run this same granary on the hosts: the apphost, or `dotnet granary.dll` when run that way.</summary>
    private static string[] ThisProgram()
    {
        var process = Environment.ProcessPath ?? "granary";
        return Path.GetFileNameWithoutExtension(process) == "dotnet"
            ? [process, typeof(ConfigCommand).Assembly.Location]
            : [process];
    }

    private static void PrintUsage(TextWriter writer)
    {
        writer.WriteLine("usage: granary config --hosts a,b,c --output F [options]");
        writer.WriteLine("  --backend ring|mesh|shm|tcp  instead of choosing from the probe");
        writer.WriteLine("  --env K=V                    variables for the verification run (repeatable)");
        writer.WriteLine("  --port P                     coordinator port on the first host (default 29500)");
        writer.WriteLine("  --auto-setup                 raise the hosts' socket buffer limits (sysctl, needs root)");
        writer.WriteLine("  --launcher TEMPLATE          as for granary launch (default ssh)");
        writer.WriteLine("  --granary CMD                how to run granary on the hosts (default: this program's path)");
        writer.WriteLine("  --probe-timeout-ms MS        per-host probe timeout (default 15000)");
    }
}
