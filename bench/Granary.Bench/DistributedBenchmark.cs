using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Sharding;
using Granary.Tensors.Cpu;

namespace Granary.Bench;

/// <summary>
/// `distributed`: decode tokens/s of the built-in model split over 1, 2 and 4 ranks (tensor and pipeline parallel),
/// the ranks being threads of this process joined by a real collective backend (shared memory by default). Prints the
/// weight bytes per rank, the split of a decode step into compute and communication, the ideal (N × one rank) and a
/// model of N hosts like this one: one rank's compute divided (tensor) or chained (pipeline), plus the collectives of a
/// step at the latency and bandwidth measured here.
/// </summary>
internal static class DistributedBenchmark
{
    public static int Run(string[] args)
    {
        var ranks = (Option(args, "--ranks") ?? "2,4").Split(',').Select(int.Parse).ToArray();
        var modes = (Option(args, "--modes") ?? "tensor,pipeline").Split(',');
        var tokens = int.Parse(Option(args, "--tokens") ?? "16");
        var backend = Option(args, "--backend") ?? "shm";
        var cores = Environment.ProcessorCount;
        var directory = Option(args, "--model") ?? BuiltInModel.EnsureCreated(Console.Error);

        var single = Measure(directory, tokens, cores);
        var config = single.Config;
        Console.WriteLine(
            $"Model {Path.GetFileName(directory)}: {config.LayerCount} layers, hidden {config.HiddenSize}, vocab {config.VocabularySize}; " +
            $"{cores} cores, load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}; backend {backend}; {tokens} decode tokens");
        Console.WriteLine($"1 rank ({cores} threads): {single.TokensPerSecond:F2} tok/s, {single.WeightBytes / 1e6:F0} MB of weights");
        Console.WriteLine();
        Console.WriteLine("| mode | ranks | weights/rank MB | decode tok/s | ideal N× tok/s | step ms | comm ms/step | comm % | allsum µs (hidden) | p2p µs (hidden) | gather/bcast µs (logits) | N hosts (model) tok/s | model comm % |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        Console.WriteLine($"| one rank | 1 | {single.WeightBytes / 1e6:F0} | {single.TokensPerSecond:F2} | {single.TokensPerSecond:F2} | {1e3 / single.TokensPerSecond:F1} | 0 | 0% | | | | {single.TokensPerSecond:F2} | 0% |");
        if (cores > 1)
        {
            // Each rank below gets cores / N threads; a 1-thread rank shows what one rank does without a worker pool.
            var oneThread = Measure(directory, tokens, 1);
            Console.WriteLine($"| one rank, 1 thread | 1 | {oneThread.WeightBytes / 1e6:F0} | {oneThread.TokensPerSecond:F2} | | {1e3 / oneThread.TokensPerSecond:F1} | 0 | 0% | | | | | |");
        }

        foreach (var mode in modes)
        {
            foreach (var n in ranks.Where(r => r > 1))
            {
                var pipeline = mode == "pipeline";
                var results = RunRanks(n, backend, group =>
                {
                    using var cpu = new CpuBackend(threads: Math.Max(1, cores / n));
                    using var loaded = pipeline
                        ? ShardedModelLoader.ShardedLoad(directory, cpu, group, null)
                        : ShardedModelLoader.ShardedLoad(directory, cpu, null, group);
                    var decode = Decode(loaded.Model, tokens, group);
                    var costs = MeasureCollectives(group, loaded.Model, pipeline);
                    return (Decode: decode, Costs: costs, loaded.Model.Shard.WeightBytesHeld);
                });

                var rank0 = results[0];
                var stepSeconds = 1 / rank0.Decode.TokensPerSecond;
                var commSeconds = results.Average(r => r.Decode.CommunicationSecondsPerStep);
                var costs = rank0.Costs;

                // N hosts: a rank gets a whole host. Tensor parallel divides one rank's step and adds two all-sums per
                // layer and the logits gather; a pipeline runs the stages one after another for one sequence and adds
                // the hand-offs and the logits broadcast.
                var oneStep = 1 / single.TokensPerSecond;
                var modelledCommunication = pipeline
                    ? ((n - 1) * costs.PointToPoint) + costs.Logits
                    : (2 * config.LayerCount * costs.AllSum) + costs.Logits;
                var modelled = (pipeline ? oneStep : oneStep / n) + modelledCommunication;
                Console.WriteLine(
                    $"| {mode} | {n} | {string.Join(" / ", results.Select(r => (r.WeightBytesHeld / 1e6).ToString("F0")))} | {rank0.Decode.TokensPerSecond:F2} | " +
                    $"{n * single.TokensPerSecond:F2} | {stepSeconds * 1e3:F1} | {commSeconds * 1e3:F2} | {100 * commSeconds / stepSeconds:F0}% | " +
                    $"{costs.AllSum * 1e6:F0} | {costs.PointToPoint * 1e6:F0} | {costs.Logits * 1e6:F0} | {1 / modelled:F2} | {100 * modelledCommunication / modelled:F1}% |");
            }
        }

        Console.WriteLine();
        Console.WriteLine("comm: time in collectives and pipeline transfers per decode step (mean over ranks; pipeline receives include waiting for earlier stages).");
        Console.WriteLine("N hosts (model): tensor = t1/N + 2·layers·allsum + gather; pipeline = t1 + (N-1)·p2p + broadcast (one sequence; N micro-batched sequences would give up to N×).");
        return 0;
    }

    private static (double TokensPerSecond, long WeightBytes, Granary.Models.Configuration.ModelConfig Config) Measure(string directory, int tokens, int threads)
    {
        using var cpu = new CpuBackend(threads);
        using var loaded = ModelLoader.Load(directory, cpu);

        // The first pass runs while the JIT is still tiering up the kernels; the second is the measurement.
        Decode(loaded.Model, tokens, group: null);
        return (Decode(loaded.Model, tokens, group: null).TokensPerSecond, loaded.Model.Shard.WeightBytesHeld, loaded.Model.Config);
    }

    private static (double TokensPerSecond, double CommunicationSecondsPerStep) Decode(CausalLanguageModel model, int tokens, Group? group)
    {
        var logits = new float[model.Config.VocabularySize];
        using var cache = model.CreateCache(tokens + 16);
        int[] prompt = [1, 2, 3, 4, 5, 6, 7, 8];
        model.Forward(prompt, cache, logits);
        for (var i = 0; i < 4; i++)
        {
            model.Forward([ArgMax(logits)], cache, logits);
        }

        group?.Barrier();
        var communication = model.CommunicationTime;
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < tokens; i++)
        {
            model.Forward([ArgMax(logits)], cache, logits);
        }

        var seconds = clock.Elapsed.TotalSeconds;
        return (tokens / seconds, (model.CommunicationTime - communication).TotalSeconds / tokens);
    }

    /// <summary>Seconds per operation of the collectives a decode step makes, at the sizes it makes them.</summary>
    private static (double AllSum, double PointToPoint, double Logits) MeasureCollectives(Group group, CausalLanguageModel model, bool pipeline)
    {
        const int repeats = 200;
        var hidden = new float[model.Config.HiddenSize];
        var vocabulary = model.Config.VocabularySize;
        var allSum = Time(repeats, () => group.AllSum<float>(hidden));

        // Ping-pong between ranks 0 and 1: half a round trip is one hand-off.
        var pointToPoint = Time(repeats, () =>
        {
            if (group.Rank == 0)
            {
                group.Send<float>(hidden, 1);
                group.Recv<float>(hidden, 1);
            }
            else if (group.Rank == 1)
            {
                group.Recv<float>(hidden, 0);
                group.Send<float>(hidden, 0);
            }
        }) / 2;
        group.Barrier();

        double logits;
        if (pipeline)
        {
            var all = new float[vocabulary];
            logits = Time(repeats / 4, () => group.Broadcast<float>(all, group.Size - 1));
        }
        else
        {
            var chunk = (vocabulary + group.Size - 1) / group.Size;
            var run = new float[chunk];
            var all = new float[chunk * group.Size];
            logits = Time(repeats / 4, () => group.AllGather<float>(run, all));
        }

        return (allSum, pointToPoint, logits);
    }

    private static double Time(int repeats, Action operation)
    {
        operation();
        var clock = Stopwatch.StartNew();
        for (var i = 0; i < repeats; i++)
        {
            operation();
        }

        return clock.Elapsed.TotalSeconds / repeats;
    }

    private static T[] RunRanks<T>(int size, string backend, Func<Group, T> body)
    {
        int port;
        using (var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        }

        var results = new T[size];
        var errors = new Exception?[size];
        var threads = Enumerable.Range(0, size).Select(rank => new Thread(() =>
        {
            try
            {
                using var group = Group.Init(new CollectiveOptions
                {
                    Rank = rank,
                    WorldSize = size,
                    Coordinator = $"127.0.0.1:{port}",
                    Backend = backend,
                    Timeout = TimeSpan.FromSeconds(60),
                });
                results[rank] = body(group);
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })
        { Name = $"rank {rank}" }).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (errors.FirstOrDefault(e => e is not null) is { } error)
        {
            throw new InvalidOperationException($"A rank failed: {error.Message}", error);
        }

        return results;
    }

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }

        return best;
    }

    private static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }
}
