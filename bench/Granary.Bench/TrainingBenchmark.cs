using System.Diagnostics;
using System.Globalization;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Tensors.Cpu;
using Granary.Training;

namespace Granary.Bench;

/// <summary>
/// `training`: data-parallel fine-tuning tokens/s on the CPU at 1, 2, 4 ranks (default: LoRA r8 on the last 4 layers
/// of the built-in ~78M model). Ranks are threads of this process joined by Group.Init over a loopback ring, as
/// `granary launch` joins processes; each rank takes its own slice (per-rank batch --batch) of every global batch and
/// keeps to --threads-per-rank cores (default: the cores divided by the most ranks), so every row gives a rank the same
/// compute and the ideal of N ranks is N times the 1-rank rate. Per step it prints the compute time (forward, backward
/// and update of the slowest rank) and the gradient all-sum time (the fastest rank's, which waits least for the
/// others), beside the ideal.
/// </summary>
internal static class TrainingBenchmark
{
    public static int Run(string[] args)
    {
        var model = Option(args, "--model") ?? BuiltInModel.EnsureCreated(Console.Error);
        int[] rankCounts = [.. (Option(args, "--ranks") ?? "1,2,4").Split(',').Select(r => int.Parse(r, CultureInfo.InvariantCulture))];
        var batchSize = Integer(args, "--batch", 2);
        var length = Integer(args, "--length", 64);
        var steps = Integer(args, "--steps", 3);
        var layers = Integer(args, "--num-layers", 4);
        var threadsPerRank = Integer(args, "--threads-per-rank", Math.Max(1, Environment.ProcessorCount / rankCounts.Max()));
        var backend = Option(args, "--backend") ?? "ring";
        var type = Option(args, "--fine-tune-type") switch
        {
            null or "lora" => FineTuneType.Lora,
            "dora" => FineTuneType.Dora,
            "full" => FineTuneType.Full,
            var other => throw new ArgumentException($"--fine-tune-type {other}: use lora, dora or full."),
        };
        var options = new FineTuneOptions
        {
            Type = type,
            GradientCheckpointing = args.Contains("--grad-checkpoint"),
            Threads = threadsPerRank,
            Lora = new LoraOptions { Rank = 8, LayerCount = layers },
        };

        // One copy of the frozen weights serves every rank: training only reads them.
        using var cpu = new CpuBackend();
        using var loaded = ModelLoader.Load(model, cpu);
        var gradientValues = TrainingModel.Create(loaded.Model, options).TrainableParameters.Sum(p => (long)p.Value.Length);
        Console.WriteLine(
            $"{model}: {(type == FineTuneType.Full ? "full fine-tuning" : $"{type} r8 on the last {layers} layers")}"
            + $"{(options.GradientCheckpointing ? ", gradient checkpointing" : "")}, per-rank batch {batchSize} x {length}, "
            + $"{threadsPerRank} cores per rank of {Environment.ProcessorCount}, all-sum of {gradientValues:N0} f32 gradients ({gradientValues * 4 / 1e6:F2} MB) over {backend}");
        if (rankCounts.Max() * threadsPerRank > Environment.ProcessorCount)
        {
            Console.WriteLine($"Note: {rankCounts.Max()} ranks x {threadsPerRank} cores exceed the {Environment.ProcessorCount} cores here; rows past {Math.Max(1, Environment.ProcessorCount / threadsPerRank)} ranks share cores and fall short of the ideal by that alone.");
        }

        // An untimed pass first, long enough for the JIT's optimised code to serve every row alike (the first row
        // would pay for it).
        RunRanks(loaded.Model, options, rankCounts[0], batchSize, length, Math.Max(steps, 8), backend);
        Console.WriteLine("| ranks | tokens/s | ideal tokens/s | efficiency | step s | compute s | all-sum s |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- | --- |");
        double? perRankRate = null;
        foreach (var ranks in rankCounts)
        {
            var results = RunRanks(loaded.Model, options, ranks, batchSize, length, steps, backend);
            var stepSeconds = results.Max(r => r.Seconds) / steps;
            var computeSeconds = results.Max(r => r.Seconds - r.AllSum) / steps;
            var allSumSeconds = results.Min(r => r.AllSum) / steps;
            var rate = results[0].Tokens / (stepSeconds * steps);
            perRankRate ??= rate / ranks;
            var ideal = perRankRate.Value * ranks;
            Console.WriteLine(FormattableString.Invariant(
                $"| {ranks} | {rate:F1} | {ideal:F1} | {rate / ideal:P0} | {stepSeconds:F3} | {computeSeconds:F3} | {allSumSeconds:F4} |"));
        }

        return 0;
    }

    private static (double Seconds, double AllSum, long Tokens)[] RunRanks(
        CausalLanguageModel model, FineTuneOptions options, int ranks, int batchSize, int length, int steps, string backend)
    {
        var port = FreePort();
        var results = new (double Seconds, double AllSum, long Tokens)[ranks];
        var errors = new Exception?[ranks];
        var threads = Enumerable.Range(0, ranks).Select(rank => new Thread(() =>
        {
            try
            {
                using var world = ranks == 1 ? null : Group.Init(new CollectiveOptions
                {
                    Rank = rank, WorldSize = ranks, Coordinator = $"127.0.0.1:{port}", Backend = backend, Timeout = TimeSpan.FromMinutes(5),
                });
                var training = TrainingModel.Create(model, options);
                var trainer = new Trainer(training, new TrainerOptions { BatchSize = batchSize, LearningRate = 1e-4f, AdapterPath = Path.GetTempPath() }, world);
                var random = new Random(1);
                var ids = Enumerable.Range(0, batchSize * ranks * length).Select(_ => random.Next(3, model.Config.VocabularySize)).ToArray();
                var batch = new TokenBatch(batchSize * ranks, length, ids, (int[])ids.Clone());
                for (var warmup = 0; warmup < 2; warmup++)
                {
                    trainer.Step([batch], (ulong)warmup);
                }

                var clock = Stopwatch.StartNew();
                double allSum = 0;
                long tokens = 0;
                for (var s = 0; s < steps; s++)
                {
                    tokens += trainer.Step([batch], (ulong)(s + 2)).Tokens;
                    allSum += trainer.LastAllSumTime.TotalSeconds;
                }

                results[rank] = (clock.Elapsed.TotalSeconds, allSum, tokens);
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (errors.FirstOrDefault(e => e is not null) is { } error)
        {
            throw new InvalidOperationException($"a rank of {ranks} failed: {error.Message}", error);
        }

        return results;
    }

    private static int FreePort()
    {
        using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        return ((System.Net.IPEndPoint)probe.LocalEndPoint!).Port;
    }

    private static int Integer(string[] args, string name, int fallback) =>
        Option(args, name) is { } value ? int.Parse(value, CultureInfo.InvariantCulture) : fallback;

    private static string? Option(string[] args, string name)
    {
        var i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
