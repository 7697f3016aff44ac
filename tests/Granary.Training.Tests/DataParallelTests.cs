using System.Net;
using System.Net.Sockets;
using Granary.Collectives;

namespace Granary.Training.Tests;

/// <summary>
/// Data parallel in one process: two ranks as threads over a loopback TCP ring (Group.Init, as `granary launch` sets
/// it up) against one rank with the whole batch. LaunchedDataParallelTests does the same with processes.
/// </summary>
public sealed class DataParallelTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("granary-data-parallel-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    // The whole loop as `granary lora --train` runs it: batching, each rank's slice, accumulation, clipping, the
    // schedule, AdamW and the checkpoint of rank 0.
    [Fact]
    public void TwoRanksTrainingWithPerRankBatchTwoMatchOneRankWithBatchFourStepForStep()
    {
        var data = Examples();
        TrainerOptions Options(int batchSize, string path) => new()
        {
            BatchSize = batchSize, Iterations = 4, LearningRate = 1e-2f, WarmupSteps = 1, CosineDecay = true, MaxGradientNorm = 1.0,
            GradientAccumulationSteps = 2, StepsPerReport = 1, SaveEvery = 100, AdapterPath = path, Seed = 3,
        };

        var single = Train(Options(4, Path.Combine(_directory, "single")), data, world: null);

        var port = FreePort();
        var ranks = new (IReadOnlyList<TrainingReport> Reports, float[][] Values)?[2];
        var errors = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(rank => new Thread(() =>
        {
            try
            {
                using var world = Group.Init(new CollectiveOptions
                {
                    Rank = rank, WorldSize = 2, Coordinator = $"127.0.0.1:{port}", Backend = "ring",
                    Timeout = TimeSpan.FromSeconds(30), ConnectTimeout = TimeSpan.FromSeconds(30),
                });
                ranks[rank] = Train(Options(2, Path.Combine(_directory, "parallel")), data, world);
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => Assert.True(t.Join(TimeSpan.FromMinutes(2)), "a rank hung"));
        Assert.All(errors, e => Assert.Null(e));

        Assert.Equal(4, single.Reports.Count);
        foreach (var rank in ranks)
        {
            var (reports, values) = rank!.Value;
            Assert.Equal(single.Reports.Select(r => r.TrainedTokens), reports.Select(r => r.TrainedTokens));
            for (var s = 0; s < single.Reports.Count; s++)
            {
                Assert.Equal(single.Reports[s].TrainLoss, reports[s].TrainLoss, 1e-5 * single.Reports[s].TrainLoss);
            }

            for (var p = 0; p < single.Values.Length; p++)
            {
                var error = Norms.RelativeError(values[p], single.Values[p]);
                Assert.True(error < 1e-5, $"parameter {p}: relative difference {error:E2}");
            }
        }

        // Rank 0 wrote the checkpoint; it holds the same adapters as the single rank's.
        using var loaded = ReferenceData.LoadModel("llama_tied");
        var saved = TrainingModel.Create(loaded.Model, Lora);
        AdapterFiles.Load(saved, Path.Combine(_directory, "parallel"));
        for (var p = 0; p < single.Values.Length; p++)
        {
            Assert.True(Norms.RelativeError(saved.TrainableParameters[p].Value, single.Values[p]) < 1e-5);
        }
    }

    [Fact]
    public void TwoRanksOfBatchOneMatchOneRankOfBatchTwoStepForStep()
    {
        using var reference = ReferenceData.Load("qwen3");
        var batch = reference.Batch();
        var options = new TrainerOptions { BatchSize = 1, LearningRate = 1e-2f, MaxGradientNorm = 0.5, AdapterPath = "unused" };
        const int steps = 3;

        var single = Run(reference, new TrainerOptions { BatchSize = 2, LearningRate = 1e-2f, MaxGradientNorm = 0.5, AdapterPath = "unused" }, batch, steps, world: null);

        var port = FreePort();
        var results = new (double[] Losses, float[][] Values)?[2];
        var errors = new Exception?[2];
        var threads = Enumerable.Range(0, 2).Select(rank => new Thread(() =>
        {
            try
            {
                using var world = Group.Init(new CollectiveOptions
                {
                    Rank = rank, WorldSize = 2, Coordinator = $"127.0.0.1:{port}", Backend = "ring",
                    Timeout = TimeSpan.FromSeconds(30), ConnectTimeout = TimeSpan.FromSeconds(30),
                });
                results[rank] = Run(reference, options, batch, steps, world);
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => Assert.True(t.Join(TimeSpan.FromMinutes(2)), "a rank hung"));
        Assert.All(errors, e => Assert.Null(e));

        foreach (var result in results)
        {
            for (var s = 0; s < steps; s++)
            {
                Assert.Equal(single.Losses[s], result!.Value.Losses[s], 1e-5 * single.Losses[s]);
            }

            for (var p = 0; p < single.Values.Length; p++)
            {
                Assert.True(Norms.RelativeError(result!.Value.Values[p], single.Values[p]) < 1e-5);
            }
        }
    }

    private static (double[] Losses, float[][] Values) Run(ReferenceData reference, TrainerOptions options, TokenBatch batch, int steps, Group? world)
    {
        using var loaded = ReferenceData.LoadModel("qwen3");
        var model = TrainingModel.Create(loaded.Model, reference.LoraOptions());
        reference.SetInitialAdapters(model);
        var trainer = new Trainer(model, options, world);
        var losses = new double[steps];
        for (var s = 0; s < steps; s++)
        {
            var (loss, tokens) = trainer.Step([batch], (ulong)s);
            losses[s] = loss / tokens;
        }

        return (losses, [.. model.TrainableParameters.Select(p => (float[])p.Value.Clone())]);
    }

    private static readonly FineTuneOptions Lora = new() { Lora = new LoraOptions { Rank = 4, Scale = 2, LayerCount = 2 } };

    private static (IReadOnlyList<TrainingReport> Reports, float[][] Values) Train(TrainerOptions options, TrainingExample[] data, Group? world)
    {
        using var loaded = ReferenceData.LoadModel("llama_tied");
        var model = TrainingModel.Create(loaded.Model, Lora);
        var reports = new Trainer(model, options, world).Train(data, null, _ => { });
        return (reports, [.. model.TrainableParameters.Select(p => (float[])p.Value.Clone())]);
    }

    private static TrainingExample[] Examples()
    {
        var random = new Random(7);
        return [.. Enumerable.Range(0, 16).Select(i => new TrainingExample([.. Enumerable.Range(0, 5 + (i % 7)).Select(_ => random.Next(3, 60))], 1))];
    }

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
