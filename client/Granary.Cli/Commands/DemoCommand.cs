using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Granary.Abstractions;
using Granary.Client;

namespace Granary.Cli.Commands;

/// <summary>
/// `granary demo`: a local cluster of real silo processes running the built-in model split across them. It streams
/// an answer, SIGKILLs one silo mid-answer, shows the answer finishing on the survivors, checks it against a run
/// without failure, and stops every silo it started (also on Ctrl-C; a silo whose demo process dies exits by itself).
/// </summary>
internal static partial class DemoCommand
{
    public const string Summary = "start a local cluster of silo processes, split the built-in model over them, kill one mid-answer and finish on the survivors";

    private static readonly TimeSpan SiloStartTimeout = TimeSpan.FromSeconds(120);

    public static async Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(
            args,
            ["--silos", "--layout", "--prompt", "--max-tokens", "--kill-after", "--threads", "--model"],
            ["--no-kill"]);
        var siloCount = arguments.GetInt("--silos", 3);
        if (siloCount is < 2 or > 4)
        {
            throw new UsageException($"--silos must be 2, 3 or 4, got {siloCount}.");
        }

        var layout = (arguments.Get("--layout") ?? "tensor").ToLowerInvariant() switch
        {
            "tensor" => "Tensor",
            "pipeline" => "Pipeline",
            var other => throw new UsageException($"--layout must be tensor or pipeline, got '{other}'."),
        };
        var maxTokens = arguments.GetInt("--max-tokens", 48);
        var killAfter = arguments.Has("--no-kill") ? int.MaxValue : arguments.GetInt("--kill-after", Math.Max(1, maxTokens / 3));
        if (maxTokens < 2 || (killAfter != int.MaxValue && (killAfter < 1 || killAfter >= maxTokens)))
        {
            throw new UsageException($"--kill-after must be between 1 and --max-tokens - 1 ({maxTokens - 1}), got {killAfter}.");
        }

        var model = arguments.Get("--model") ?? GranaryClient.BuiltInModel;
        var prompt = arguments.Get("--prompt") ?? "Tell me about the harvest.";
        var threads = arguments.GetInt("--threads", Math.Max(1, Environment.ProcessorCount / siloCount));

        using var cancel = ConsoleCancellation.Create();
        var silo = SiloCommand.Resolve();
        var logs = Directory.CreateTempSubdirectory("granary-demo-");
        var clusterId = $"demo-{Guid.NewGuid().ToString("N")[..8]}";
        var ports = FreePorts(2 * siloCount);
        var silos = new List<DemoSilo>();
        var succeeded = false;
        try
        {
            Console.Error.WriteLine($"Starting {siloCount} silo processes (cluster {clusterId}, logs in {logs.FullName})...");
            for (var i = 0; i < siloCount; i++)
            {
                string[] siloArguments =
                [
                    "--silo-name", $"silo-{i}", "--silo-port", Port(ports[2 * i]), "--gateway-port", Port(ports[(2 * i) + 1]),
                    "--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", $"127.0.0.1:{ports[0]}",
                    "--layout", layout, "--max-shards", Port(siloCount), "--threads", Port(threads),
                    "--parent-pid", Port(Environment.ProcessId),
                ];
                silos.Add(DemoSilo.Start(silo, $"silo-{i}", ports[(2 * i) + 1], siloArguments, Path.Combine(logs.FullName, $"silo-{i}.log")));
            }

            foreach (var started in silos)
            {
                await started.WaitUntilReadyAsync(SiloStartTimeout, cancel.Token);
                Console.Error.WriteLine($"  {started.Name}: pid {started.ProcessId}, gateway 127.0.0.1:{started.GatewayPort}");
            }

            await using var client = await GranaryClient.ConnectAsync(
                options =>
                {
                    options.ClusterId = clusterId;
                    options.Gateways = [.. silos.Select(s => $"127.0.0.1:{s.GatewayPort}")];
                },
                cancel.Token);
            await WaitForActiveSilosAsync(client, siloCount, cancel.Token);

            Console.Error.WriteLine($"Loading {model}, {layout.ToLowerInvariant()} parallel over the silos...");
            var clock = Stopwatch.StartNew();
            var plan = await client.LoadModelAsync(model, cancel.Token);
            Console.Error.WriteLine($"Plan {plan.Version} ({clock.Elapsed.TotalSeconds:F1} s), coordinator on {plan.CoordinatorSilo}:");
            await PrintPlanAsync(client, plan, cancel.Token);

            var job = new GenerationJob
            {
                Prompt = Prompt.FromText(prompt),
                MaxTokens = maxTokens,
                Sampling = SamplingSettings.Greedy,
                StopAtEndOfSequence = false,
            };
            // A silo with a shard, never the first one: with localhost membership it holds the membership table, without
            // which nobody can be declared dead. Preferably not the coordinator's either, so that the coordinator
            // re-plans; killing the coordinator's silo makes the client resume the stream on a new coordinator instead.
            var candidates = plan.Shards.Select(shard => shard.Shard.SiloName).Where(name => name != silos[0].Name).ToList();
            var victim = candidates.LastOrDefault(name => name != plan.CoordinatorSilo) ?? candidates.LastOrDefault();
            Console.Error.WriteLine($"Prompt: {prompt}");
            var (tokens, summary, killedAt) = await StreamAsync(client, model, job, killAfter, victim is null ? null : silos.Single(s => s.Name == victim), cancel.Token);

            var finalPlan = await client.LoadModelAsync(model, cancel.Token);
            Console.Error.WriteLine();
            Console.Error.WriteLine(
                $"{summary.GeneratedTokens} tokens, decode {summary.GenerationTokensPerSecond:F1} tokens/s on the last plan, " +
                $"{summary.Failovers} failover(s); finished on plan {finalPlan.Version}: {Describe(finalPlan)}.");
            if (killedAt is { } at)
            {
                // The same job again, with no failure: greedy decoding must give the very same tokens.
                var again = await client.GenerateAsync(model, job, cancel.Token);
                var same = again.Tokens.SequenceEqual(tokens);
                Console.Error.WriteLine(
                    $"Check: the answer survived the SIGKILL after token {at}; a run without failure gives " +
                    (same ? $"the same {tokens.Count} tokens." : $"different tokens ({again.Tokens.Length}), which is a bug."));
                succeeded = same;
            }
            else
            {
                succeeded = true;
            }

            return succeeded ? 0 : 1;
        }
        finally
        {
            Console.Error.WriteLine("Stopping the silos...");
            await Task.WhenAll(silos.Select(s => s.StopAsync(TimeSpan.FromSeconds(15))));
            foreach (var started in silos)
            {
                started.Dispose();
            }

            if (succeeded)
            {
                logs.Delete(recursive: true);
            }
            else
            {
                Console.Error.WriteLine($"Silo logs kept in {logs.FullName}");
            }
        }
    }

    private static async Task<(List<int> Tokens, GenerationSummary Summary, int? KilledAt)> StreamAsync(
        GranaryClient client, string model, GenerationJob job, int killAfter, DemoSilo? victim, CancellationToken cancellationToken)
    {
        var tokens = new List<int>();
        GenerationSummary? summary = null;
        int? killedAt = null;
        var clock = Stopwatch.StartNew();
        var last = TimeSpan.Zero;
        var longestPause = TimeSpan.Zero;
        await foreach (var chunk in client.StreamAsync(model, job, cancellationToken))
        {
            Console.Out.Write(chunk.Text);
            Console.Out.Flush();
            summary = chunk.Summary ?? summary;
            if (!chunk.HasToken)
            {
                continue;
            }

            tokens.Add(chunk.TokenId);
            if (killedAt is not null)
            {
                longestPause = TimeSpan.FromTicks(Math.Max(longestPause.Ticks, (clock.Elapsed - last).Ticks));
            }

            last = clock.Elapsed;
            if (killedAt is null && victim is not null && tokens.Count >= killAfter)
            {
                victim.Kill();
                killedAt = tokens.Count;
                Console.Out.Flush();
                Console.Error.Write($" [SIGKILL {victim.Name} (pid {victim.ProcessId}) after {tokens.Count} tokens at {tokens.Count / clock.Elapsed.TotalSeconds:F1} tokens/s] ");
            }
        }

        Console.Out.WriteLine();
        var wall = clock.Elapsed;
        Console.Error.WriteLine(
            $"{tokens.Count} tokens in {wall.TotalSeconds:F1} s ({tokens.Count / wall.TotalSeconds:F1} tokens/s as the client saw them" +
            (killedAt is null ? ")" : $", with a {longestPause.TotalSeconds:F1} s pause while the survivors took over)"));
        return (tokens, summary ?? throw new InvalidOperationException("The stream ended without its summary."), killedAt);
    }

    private static async Task PrintPlanAsync(GranaryClient client, ModelPlan plan, CancellationToken cancellationToken)
    {
        var status = await client.StatusAsync(cancellationToken);
        foreach (var shard in plan.Shards)
        {
            var held = status.Silos.FirstOrDefault(silo => silo.SiloName == shard.Shard.SiloName)?.Host?.Shards
                .FirstOrDefault(loaded => loaded.Assignment.Shard == shard.Shard);
            Console.Error.WriteLine(
                $"  {shard.Shard.SiloName}: layers {shard.FirstLayer}-{shard.FirstLayer + shard.LayerCount - 1}, " +
                $"stage {shard.PipelineStage + 1}/{shard.PipelineStageCount}, tensor rank {shard.TensorRank + 1}/{shard.TensorGroupSize}" +
                (held is null ? "" : string.Create(CultureInfo.InvariantCulture, $", {held.WeightBytes / 1e6:F1} MB of weights")) +
                (plan.Group is { } group ? $", data plane {group.Peers[shard.WorldRank]}" : ""));
        }
    }

    private static string Describe(ModelPlan plan) => $"{plan.Layout} on {string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName))}";

    private static async Task WaitForActiveSilosAsync(GranaryClient client, int count, CancellationToken cancellationToken)
    {
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(TimeSpan.FromSeconds(60));
        while (true)
        {
            var status = await client.StatusAsync(deadline.Token);
            if (status.Silos.Count(silo => silo.Status == "Active" && silo.Host is not null) == count)
            {
                return;
            }

            await Task.Delay(TimeSpan.FromMilliseconds(250), deadline.Token);
        }
    }

    private static string Port(int value) => value.ToString(CultureInfo.InvariantCulture);

    private static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        try
        {
            listeners.ForEach(listener => listener.Start());
            return [.. listeners.Select(listener => ((IPEndPoint)listener.LocalEndpoint).Port)];
        }
        finally
        {
            listeners.ForEach(listener => listener.Stop());
        }
    }

    /// <summary>How to start the silo program built beside this CLI.</summary>
    private sealed record SiloCommand(string FileName, string[] Prefix)
    {
        /// <summary>
        /// The silo's build output sits beside the CLI's (artifacts/bin/Granary.Silo/CONFIG next to
        /// artifacts/bin/Granary.Cli/CONFIG); the CLI project builds it too. Its apphost starts it directly.
        /// </summary>
        public static SiloCommand Resolve()
        {
            var cliOutput = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var siloOutput = Path.Combine(cliOutput.Parent?.Parent?.FullName ?? cliOutput.FullName, "Granary.Silo", cliOutput.Name);
            var apphost = Path.Combine(siloOutput, OperatingSystem.IsWindows() ? "Granary.Silo.exe" : "Granary.Silo");
            if (File.Exists(apphost))
            {
                return new SiloCommand(apphost, []);
            }

            var assembly = Path.Combine(siloOutput, "Granary.Silo.dll");
            if (File.Exists(assembly))
            {
                return new SiloCommand("dotnet", ["exec", assembly]);
            }

            throw new InvalidOperationException(
                $"The silo is not built at {siloOutput}; build it with `dotnet build silo/Granary.Silo -c {cliOutput.Name}` (building the CLI builds it too).");
        }
    }

    /// <summary>A silo process of the demo, its output in a log file; killed if it is still running when disposed.</summary>
    private sealed partial class DemoSilo : IDisposable
    {
        private const int SigTerm = 15;

        private readonly Process _process;
        private readonly StreamWriter _log;
        private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

        private DemoSilo(string name, int gatewayPort, Process process, StreamWriter log)
        {
            Name = name;
            GatewayPort = gatewayPort;
            _process = process;
            _log = log;
        }

        public string Name { get; }

        public int GatewayPort { get; }

        public int ProcessId => _process.Id;

        public static DemoSilo Start(SiloCommand command, string name, int gatewayPort, string[] arguments, string logPath)
        {
            var start = new ProcessStartInfo(command.FileName)
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                RedirectStandardInput = true,
                UseShellExecute = false,
            };
            foreach (var argument in command.Prefix.Concat(arguments))
            {
                start.ArgumentList.Add(argument);
            }

            var log = new StreamWriter(logPath) { AutoFlush = true };
            var process = new Process { StartInfo = start, EnableRaisingEvents = true };
            var silo = new DemoSilo(name, gatewayPort, process, log);
            process.OutputDataReceived += (_, e) => silo.OnLine(e.Data);
            process.ErrorDataReceived += (_, e) => silo.OnLine(e.Data);
            process.Exited += (_, _) => silo._ready.TrySetException(new InvalidOperationException($"Silo {name} exited before it was ready; see {logPath}."));
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return silo;
        }

        public async Task WaitUntilReadyAsync(TimeSpan timeout, CancellationToken cancellationToken)
        {
            try
            {
                await _ready.Task.WaitAsync(timeout, cancellationToken);
            }
            catch (TimeoutException)
            {
                throw new TimeoutException($"Silo {Name} was not ready within {timeout.TotalSeconds:F0} s.");
            }
        }

        /// <summary>SIGKILL: the silo gets no chance to leave the cluster or close its connections.</summary>
        public void Kill()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }
        }

        /// <summary>SIGTERM, so the silo leaves the cluster; SIGKILL if it has not exited within <paramref name="timeout"/>.</summary>
        public async Task StopAsync(TimeSpan timeout)
        {
            try
            {
                if (_process.HasExited)
                {
                    return;
                }

                _ = SendSignal(_process.Id, SigTerm);
                using var deadline = new CancellationTokenSource(timeout);
                await _process.WaitForExitAsync(deadline.Token);
            }
            catch (OperationCanceledException)
            {
                Kill();
            }
            catch (InvalidOperationException)
            {
                // Never started.
            }
        }

        public void Dispose()
        {
            try
            {
                Kill();
                _process.WaitForExit(5000);
            }
            catch (InvalidOperationException)
            {
                // Never started.
            }

            _process.Dispose();
            lock (_log)
            {
                _log.Dispose();
            }
        }

        private void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (_log)
            {
                if (_log.BaseStream is not null)
                {
                    _log.WriteLine(line);
                }
            }

            if (line.Contains($"Granary silo {Name} ready", StringComparison.Ordinal))
            {
                _ready.TrySetResult();
            }
        }

        [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
        private static partial int SendSignal(int pid, int signal);
    }
}
