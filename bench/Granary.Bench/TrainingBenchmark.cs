using System.Diagnostics;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Tensors.Cpu;
using Granary.Training;

namespace Granary.Bench;

/// <summary>
/// `training`: LoRA (or full) training tokens/s on the CPU for a model folder (default: the built-in ~78M model).
/// With --ranks 1,2,4 it runs that many data-parallel ranks as threads of this process (ring transport over
/// loopback), each with per-rank batch --batch, and prints tokens/s, compute and gradient all-sum time per step,
/// and the ideal (linear) scaling of the 1-rank rate.
/// </summary>
internal static class TrainingBenchmark
{
    public static int Run(string[] args)
    {
        if (Option(args, "--ranks") is { } rankList)
        {
            return RunRanks(args, [.. rankList.Split(',').Select(r => int.Parse(r, System.Globalization.CultureInfo.InvariantCulture))]);
        }

        var model = Option(args, "--model") ?? BuiltInModel.EnsureCreated(Console.Error);
        var batchSize = int.Parse(Option(args, "--batch") ?? "4", System.Globalization.CultureInfo.InvariantCulture);
        var length = int.Parse(Option(args, "--length") ?? "128", System.Globalization.CultureInfo.InvariantCulture);
        var steps = int.Parse(Option(args, "--steps") ?? "3", System.Globalization.CultureInfo.InvariantCulture);
        var layers = int.Parse(Option(args, "--num-layers") ?? "4", System.Globalization.CultureInfo.InvariantCulture);
        var full = Option(args, "--fine-tune-type") == "full";
        var checkpointing = args.Contains("--grad-checkpoint");

        using var backend = new CpuBackend();
        using var loaded = ModelLoader.Load(model, backend);
        var options = new FineTuneOptions
        {
            Type = full ? FineTuneType.Full : FineTuneType.Lora,
            GradientCheckpointing = checkpointing,
            Lora = new LoraOptions { Rank = 8, LayerCount = layers },
        };
        var training = TrainingModel.Create(loaded.Model, options);
        var trainer = new Trainer(training, new TrainerOptions { BatchSize = batchSize, LearningRate = 1e-4f, AdapterPath = Path.GetTempPath() });
        var random = new Random(1);
        var ids = Enumerable.Range(0, batchSize * length).Select(_ => random.Next(3, loaded.Model.Config.VocabularySize)).ToArray();
        var batch = new TokenBatch(batchSize, length, ids, (int[])ids.Clone());

        Console.WriteLine($"{model}: {(full ? "full" : $"LoRA r8 on the last {layers} layers")}{(checkpointing ? ", gradient checkpointing" : "")}, batch {batchSize} x {length}, {backend.Threads} threads");
        Console.WriteLine("| step | step s | tokens/s | loss |");
        Console.WriteLine("| --- | --- | --- | --- |");
        trainer.Step([batch], 0);
        for (var s = 1; s <= steps; s++)
        {
            var clock = Stopwatch.StartNew();
            var (loss, tokens) = trainer.Step([batch], (ulong)s);
            var seconds = clock.Elapsed.TotalSeconds;
            Console.WriteLine(FormattableString.Invariant($"| {s} | {seconds:F3} | {tokens / seconds:F1} | {loss / tokens:F4} |"));
        }

        Console.WriteLine(FormattableString.Invariant($"Peak memory {Process.GetCurrentProcess().PeakWorkingSet64 / 1e9:F3} GB"));
        return 0;
    }

    private static int RunRanks(string[] args, int[] rankCounts)
    {
        var model = Option(args, "--model") ?? BuiltInModel.EnsureCreated(Console.Error);
        var batchSize = int.Parse(Option(args, "--batch") ?? "2", System.Globalization.CultureInfo.InvariantCulture);
        var length = int.Parse(Option(args, "--length") ?? "64", System.Globalization.CultureInfo.InvariantCulture);
        var steps = int.Parse(Option(args, "--steps") ?? "3", System.Globalization.CultureInfo.InvariantCulture);
        var layers = int.Parse(Option(args, "--num-layers") ?? "4", System.Globalization.CultureInfo.InvariantCulture);
        Console.WriteLine($"{model}: LoRA r8 on the last {layers} layers, per-rank batch {batchSize} x {length}, ranks as threads sharing {Environment.ProcessorCount} cores");
        Console.WriteLine("| ranks | tokens/s | ideal tokens/s | step s | compute s | all-sum s |");
        Console.WriteLine("| --- | --- | --- | --- | --- | --- |");
        double? single = null;
        foreach (var ranks in rankCounts)
        {
            var port = FreePort();
            var results = new (double Seconds, double AllSum, long Tokens)[ranks];
            var threads = Enumerable.Range(0, ranks).Select(rank => new Thread(() =>
            {
                using var world = Granary.Collectives.Group.Init(new Granary.Collectives.CollectiveOptions
                {
                    Rank = rank, WorldSize = ranks, Coordinator = $"127.0.0.1:{port}", Backend = ranks == 1 ? "auto" : "ring",
                    Timeout = TimeSpan.FromMinutes(5),
                });
                using var backend = new CpuBackend(Math.Max(1, Environment.ProcessorCount / ranks));
                using var loaded = ModelLoader.Load(model, backend);
                var training = TrainingModel.Create(loaded.Model, new FineTuneOptions { Lora = new LoraOptions { Rank = 8, LayerCount = layers } });
                var trainer = new Trainer(training, new TrainerOptions { BatchSize = batchSize, LearningRate = 1e-4f, AdapterPath = Path.GetTempPath() }, world);
                var random = new Random(1);
                var ids = Enumerable.Range(0, batchSize * ranks * length).Select(_ => random.Next(3, loaded.Model.Config.VocabularySize)).ToArray();
                var batch = new TokenBatch(batchSize * ranks, length, ids, (int[])ids.Clone());
                trainer.Step([batch], 0);
                var clock = Stopwatch.StartNew();
                double allSum = 0;
                long tokens = 0;
                for (var s = 1; s <= steps; s++)
                {
                    tokens += trainer.Step([batch], (ulong)s).Tokens;
                    allSum += trainer.LastAllSumTime.TotalSeconds;
                }

                results[rank] = (clock.Elapsed.TotalSeconds, allSum, tokens);
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            var seconds = results.Max(r => r.Seconds);
            var rate = results[0].Tokens / seconds;
            single ??= rate / ranks;
            var perStep = seconds / steps;
            var allSumPerStep = results.Max(r => r.AllSum) / steps;
            Console.WriteLine(FormattableString.Invariant(
                $"| {ranks} | {rate:F1} | {single.Value * ranks:F1} | {perStep:F3} | {perStep - allSumPerStep:F3} | {allSumPerStep:F4} |"));
        }

        return 0;
    }

    private static int FreePort()
    {
        using var probe = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.InterNetwork, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
        probe.Bind(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, 0));
        return ((System.Net.IPEndPoint)probe.LocalEndPoint!).Port;
    }

    private static string? Option(string[] args, string name)
    {
        var i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }
}
