using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Granary.Collectives;

namespace Granary.Bench;

/// <summary>
/// `granary-bench collectives`: all-sum latency (8 B..64 KiB) and bus bandwidth (1 MiB..--max-bytes) for 2, 3, 4 ranks
/// on each Granary transport, next to Open MPI's MPI_Allreduce over TCP and over shared memory (when mpicc and mpirun
/// exist) and raw one-stream loopback TCP. Ranks are separate processes: this program re-run with --worker.
/// Bus bandwidth follows the NCCL convention: bytes / time × 2(n-1)/n, the traffic each rank's link must carry.
/// </summary>
internal static class CollectivesBench
{
    private static readonly long[] LatencySizes = [8, 64, 512, 4 << 10, 64 << 10];

    public static int Run(string[] args)
    {
        if (args.Contains("--worker"))
        {
            return Worker(args);
        }

        var options = Parse(args);
        var sizes = LatencySizes.Concat(BandwidthSizes(options.MaxBytes)).ToArray();
        var mpi = options.UseMpi ? BuildMpiPeer(options) : null;
        var results = new Dictionary<(string Transport, int Ranks), Dictionary<long, double>>();
        var columns = options.Transports.ToList();
        if (mpi is not null)
        {
            columns.AddRange(["mpi-tcp", "mpi-shm"]);
        }

        foreach (var ranks in options.Ranks)
        {
            foreach (var transport in options.Transports)
            {
                Console.Error.WriteLine($"granary {transport}, {ranks} ranks...");
                results[(transport, ranks)] = RunGranary(transport, ranks, sizes, options.MinSeconds);
            }

            if (mpi is not null)
            {
                Console.Error.WriteLine($"open mpi, {ranks} ranks...");
                results[("mpi-tcp", ranks)] = RunMpi(mpi, ranks, sizes, options.MinSeconds, "--mca btl tcp,self --mca btl_tcp_if_include lo");
                results[("mpi-shm", ranks)] = RunMpi(mpi, ranks, sizes, options.MinSeconds, "--mca btl self,vader");
            }
        }

        var loopback = LoopbackBandwidth(Math.Min(options.MaxBytes, 256L << 20) * 4);
        Print(Console.Out, options, columns, results, loopback);
        return 0;
    }

    private sealed record Options(int[] Ranks, string[] Transports, long MaxBytes, double MinSeconds, bool UseMpi, string? MpiSource);

    private static Options Parse(string[] args)
    {
        var ranks = new[] { 2, 3, 4 };
        var transports = new[] { "ring", "mesh", "tcp", "shm" };
        var maxBytes = 256L << 20;
        var minSeconds = 0.3;
        var useMpi = true;
        string? mpiSource = null;
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
            switch (args[i])
            {
                case "--ranks": ranks = Next().Split(',').Select(int.Parse).ToArray(); break;
                case "--transports": transports = Next().Split(','); break;
                case "--max-bytes": maxBytes = ParseBytes(Next()); break;
                case "--min-seconds": minSeconds = double.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--no-mpi": useMpi = false; break;
                case "--mpi-source": mpiSource = Next(); break;
                default:
                    Console.Error.WriteLine("usage: collectives [--ranks 2,3,4] [--transports ring,mesh,tcp,shm] [--max-bytes 256M] [--min-seconds 0.3] [--no-mpi] [--mpi-source FILE.c]");
                    throw new ArgumentException($"unknown option '{args[i]}'.");
            }
        }

        return new Options(ranks, transports, maxBytes, minSeconds, useMpi, mpiSource);
    }

    private static long ParseBytes(string text)
    {
        var multiplier = char.ToUpperInvariant(text[^1]) switch { 'K' => 1L << 10, 'M' => 1L << 20, 'G' => 1L << 30, _ => 1L };
        return long.Parse(multiplier == 1 ? text : text[..^1], CultureInfo.InvariantCulture) * multiplier;
    }

    private static IEnumerable<long> BandwidthSizes(long maxBytes)
    {
        for (var size = 1L << 20; size <= maxBytes; size *= 4)
        {
            yield return size;
        }
    }

    /// <summary>One rank: times all-sums of each size; rank 0 prints the slowest rank's mean per size.</summary>
    private static int Worker(string[] args)
    {
        var sizes = args[Array.IndexOf(args, "--sizes") + 1].Split(',').Select(long.Parse).ToArray();
        var minSeconds = double.Parse(args[Array.IndexOf(args, "--min-seconds") + 1], CultureInfo.InvariantCulture);
        using var group = Group.Init(strict: true);
        for (var index = 0; index < sizes.Length; index++)
        {
            var bytes = sizes[index];
            var buffer = new float[bytes / sizeof(float)];
            for (var i = 0; i < buffer.Length; i++)
            {
                buffer[i] = group.Rank + (i % 7);
            }

            // Rank 0 calibrates; every rank must run the same number of iterations. Runs of a quarter of the warm-up
            // estimate the rate, then a warm-up of about 0.2 s runs, so the timed loop runs fully compiled code (the
            // JIT replaces a hot method's first, unoptimized code only after 100 ms without new compilations) on warm
            // connections.
            // The first size warms up for a second: the process's start-up work (with more ranks than cores, every
            // rank's JIT at once) otherwise lands in its timed loop (4 ranks on 2 cores, 8 B: 24 against 14 us).
            var warmUp = index == 0 ? 1.0 : Math.Min(minSeconds, 0.2);
            Span<int> iterations = [Iterations(Time(group, buffer, 3) / 3, warmUp / 4)];
            foreach (var seconds in new[] { warmUp, minSeconds })
            {
                group.Broadcast(iterations, root: 0);
                iterations[0] = Iterations(Time(group, buffer, iterations[0]) / iterations[0], seconds);
            }

            group.Broadcast(iterations, root: 0);
            Span<double> mean = [Time(group, buffer, iterations[0]) / iterations[0]];
            Span<float> slowest = [(float)mean[0]];
            group.AllMax(slowest);
            if (group.Rank == 0)
            {
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"RESULT {bytes} {slowest[0]:0.#########}"));
            }
        }

        return 0;
    }

    private static int Iterations(double secondsEach, double seconds) =>
        (int)Math.Clamp(secondsEach > 0 ? seconds / secondsEach : 1000, 3, 10_000_000);

    private static double Time(Group group, float[] buffer, int iterations)
    {
        group.Barrier();
        var watch = Stopwatch.StartNew();
        for (var i = 0; i < iterations; i++)
        {
            group.AllSum<float>(buffer);
        }

        return watch.Elapsed.TotalSeconds;
    }

    private static Dictionary<long, double> RunGranary(string transport, int ranks, long[] sizes, double minSeconds)
    {
        var port = FreePort();
        var self = Environment.ProcessPath!;
        var prefix = Path.GetFileNameWithoutExtension(self) == "dotnet" ? new[] { typeof(CollectivesBench).Assembly.Location } : [];
        var processes = Enumerable.Range(0, ranks).Select(rank =>
        {
            var info = new ProcessStartInfo(self) { RedirectStandardOutput = true, UseShellExecute = false };
            foreach (var arg in prefix.Concat(["collectives", "--worker", "--sizes", string.Join(',', sizes), "--min-seconds", minSeconds.ToString(CultureInfo.InvariantCulture)]))
            {
                info.ArgumentList.Add(arg);
            }

            info.Environment[DistributedEnvironment.Rank] = rank.ToString(CultureInfo.InvariantCulture);
            info.Environment[DistributedEnvironment.WorldSize] = ranks.ToString(CultureInfo.InvariantCulture);
            info.Environment[DistributedEnvironment.Coordinator] = $"127.0.0.1:{port}";
            info.Environment[DistributedEnvironment.Backend] = transport;
            info.Environment[DistributedEnvironment.TimeoutMilliseconds] = "60000";
            return Process.Start(info)!;
        }).ToList();
        var output = processes[0].StandardOutput.ReadToEndAsync();
        foreach (var process in processes.Skip(1))
        {
            process.StandardOutput.ReadToEnd();
        }

        foreach (var process in processes)
        {
            if (!process.WaitForExit(TimeSpan.FromMinutes(10)))
            {
                process.Kill(entireProcessTree: true);
            }
        }

        return ParseResults(output.Result);
    }

    private static string? BuildMpiPeer(Options options)
    {
        var source = options.MpiSource ?? FindUpwards(Path.Combine("bench", "collectives", "allreduce_bench.c"));
        if (source is null || !OnPath("mpicc") || !OnPath("mpirun"))
        {
            Console.Error.WriteLine("Open MPI peer skipped: needs mpicc and mpirun (apt-get install openmpi-bin libopenmpi-dev) and bench/collectives/allreduce_bench.c.");
            return null;
        }

        var binary = Path.Combine(Path.GetTempPath(), "granary-allreduce-bench");
        using var compiler = Process.Start("mpicc", ["-O2", "-o", binary, source]);
        compiler.WaitForExit();
        return compiler.ExitCode == 0 ? binary : null;
    }

    private static Dictionary<long, double> RunMpi(string binary, int ranks, long[] sizes, double minSeconds, string transportOptions)
    {
        var info = new ProcessStartInfo("mpirun") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        // Unbound like Granary's ranks, so both are placed by the operating system (mpirun would bind to cores at 2 ranks).
        foreach (var arg in $"--allow-run-as-root --oversubscribe --bind-to none -np {ranks} {transportOptions}".Split(' ')
                     .Concat([binary, string.Join(',', sizes), minSeconds.ToString(CultureInfo.InvariantCulture)]))
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEndAsync();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            Console.Error.WriteLine($"mpirun failed ({process.ExitCode}): {error.Result}");
        }

        return ParseResults(output);
    }

    private static Dictionary<long, double> ParseResults(string output) =>
        output.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Where(line => line.StartsWith("RESULT ", StringComparison.Ordinal))
            .Select(line => line.Split(' '))
            .ToDictionary(parts => long.Parse(parts[1], CultureInfo.InvariantCulture), parts => double.Parse(parts[2], CultureInfo.InvariantCulture));

    /// <summary>One TCP stream over loopback, 4 MiB writes: the ceiling a single socket reaches on this machine.</summary>
    private static double LoopbackBandwidth(long totalBytes)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var sender = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        sender.Connect(listener.LocalEndPoint!);
        using var receiver = listener.Accept();
        var chunk = new byte[4 << 20];
        var watch = Stopwatch.StartNew();
        var reading = Task.Run(() =>
        {
            var buffer = new byte[4 << 20];
            long received = 0;
            while (received < totalBytes)
            {
                received += receiver.Receive(buffer);
            }
        });
        // The last write is cut to what the reader still expects: a whole 4 MiB past its total would block forever.
        for (long sent = 0; sent < totalBytes; sent += chunk.Length)
        {
            sender.Send(chunk.AsSpan(0, (int)Math.Min(chunk.Length, totalBytes - sent)));
        }

        reading.Wait();
        return totalBytes / watch.Elapsed.TotalSeconds;
    }

    private static void Print(TextWriter writer, Options options, List<string> columns, Dictionary<(string, int), Dictionary<long, double>> results, double loopback)
    {
        var table = new StringBuilder();
        table.AppendLine($"All-sum of f32, {Environment.ProcessorCount} cores, ranks as processes on one host (loopback / shared memory).");
        table.AppendLine();
        table.AppendLine("Latency, µs (slowest rank's mean):");
        Row(table, "ranks", "bytes", columns);
        foreach (var ranks in options.Ranks)
        {
            foreach (var size in LatencySizes)
            {
                Row(table, ranks.ToString(CultureInfo.InvariantCulture), Bytes(size),
                    columns.Select(c => results.TryGetValue((c, ranks), out var r) && r.TryGetValue(size, out var t) ? (t * 1e6).ToString("0.0", CultureInfo.InvariantCulture) : "-"));
            }
        }

        table.AppendLine();
        table.AppendLine("Bus bandwidth, GB/s (bytes / time × 2(n-1)/n):");
        Row(table, "ranks", "bytes", columns);
        foreach (var ranks in options.Ranks)
        {
            foreach (var size in BandwidthSizes(options.MaxBytes))
            {
                var factor = 2.0 * (ranks - 1) / ranks;
                Row(table, ranks.ToString(CultureInfo.InvariantCulture), Bytes(size),
                    columns.Select(c => results.TryGetValue((c, ranks), out var r) && r.TryGetValue(size, out var t) ? (size / t * factor / 1e9).ToString("0.00", CultureInfo.InvariantCulture) : "-"));
            }
        }

        table.AppendLine();
        table.AppendLine(string.Create(CultureInfo.InvariantCulture, $"Raw loopback TCP, one stream: {loopback / 1e9:0.00} GB/s"));
        writer.Write(table.ToString());
    }

    private static void Row(StringBuilder table, string ranks, string bytes, IEnumerable<string> cells)
    {
        table.Append(ranks.PadLeft(5)).Append(bytes.PadLeft(8));
        foreach (var cell in cells)
        {
            table.Append(cell.PadLeft(9));
        }

        table.AppendLine();
    }

    private static string Bytes(long size) =>
        size >= 1 << 20 ? $"{size >> 20}M" : size >= 1 << 10 ? $"{size >> 10}K" : $"{size}";

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    private static bool OnPath(string program) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(dir => File.Exists(Path.Combine(dir, program)));

    private static string? FindUpwards(string relative)
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                var candidate = Path.Combine(dir.FullName, relative);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        return null;
    }
}
