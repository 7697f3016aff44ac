using Granary.Abstractions;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Tensors.Cpu;
using Granary.Training;

namespace Granary.Runtime.Tests;

/// <summary>LoRA fine-tuning through the coordinator, data parallel over two in-process silos.</summary>
public sealed class ClusterTrainingTests(TensorCluster fixture) : IClassFixture<TensorCluster>, IDisposable
{
    private readonly DirectoryInfo _directory = Directory.CreateTempSubdirectory("granary-cluster-training-");

    public void Dispose() => _directory.Delete(recursive: true);

    [Fact]
    public async Task Data_parallel_training_over_two_silos_matches_one_process_with_the_whole_batch_and_checkpoints()
    {
        var model = BuiltInModel.EnsureCreated(TextWriter.Null);
        var data = _directory.CreateSubdirectory("data").FullName;
        string[] lines =
        [
            "The harvest came early this year.", "Bread is baked from the new wheat.", "The barn is full of hay.",
            "Apples fall in the orchard.", "The mill turns all night.", "Farmers sing at the harvest feast.",
        ];
        await File.WriteAllLinesAsync(Path.Combine(data, "train.jsonl"), lines.Select(line => $"{{\"text\": \"{line}\"}}"));
        var job = new TrainingJob
        {
            DataDirectory = data,
            AdapterPath = Path.Combine(_directory.FullName, "adapters"),
            Iterations = 3,
            BatchSize = 1,
            LearningRate = 1e-3f,
            LoraRank = 4,
            LoraLayers = 2,
            SaveEvery = 2,
            Seed = 5,
            MaxSequenceLength = 64,
        };

        var reports = new List<TrainingProgress>();
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(4));
        await foreach (var report in fixture.Cluster.GrainFactory.GetGrain<ICoordinatorGrain>(model).TrainAsync(job, deadline.Token))
        {
            reports.Add(report);
        }

        Assert.Equal([1L, 2, 3], reports.Select(report => report.Iteration));
        Assert.All(reports, report => Assert.Equal((2, 0), (report.Silos.Length, report.Restarts)));
        Assert.True(File.Exists(Path.Combine(job.AdapterPath, AdapterFiles.WeightsFileName)));
        Assert.True(File.Exists(Path.Combine(job.AdapterPath, Trainer.OptimizerFileName)));

        // One process with the whole batch (two examples a step) takes the same steps.
        var single = TrainInProcess(model, job, Path.Combine(_directory.FullName, "single"));
        Assert.Equal(single.Select(report => report.TrainedTokens), reports.Select(report => report.TrainedTokens));
        for (var step = 0; step < single.Count; step++)
        {
            Assert.Equal(single[step].TrainLoss, reports[step].TrainLoss, 1e-4 * single[step].TrainLoss);
        }
    }

    private static IReadOnlyList<TrainingReport> TrainInProcess(string modelDirectory, TrainingJob job, string adapterPath)
    {
        using var backend = new CpuBackend(1);
        using var loaded = ModelLoader.Load(modelDirectory, backend);
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions
        {
            Seed = job.Seed,
            Threads = 1,
            Lora = new LoraOptions { Rank = job.LoraRank, LayerCount = job.LoraLayers },
        });
        var trainer = new Trainer(model, new TrainerOptions
        {
            BatchSize = job.BatchSize * 2,
            Iterations = job.Iterations,
            LearningRate = job.LearningRate,
            StepsPerReport = 1,
            StepsPerEval = int.MaxValue,
            SaveEvery = job.SaveEvery,
            MaxSequenceLength = job.MaxSequenceLength,
            Seed = job.Seed,
            AdapterPath = adapterPath,
        });
        var train = JsonlDataset.LoadSplit(job.DataDirectory, "train", loaded.Tokenizer!)!;
        return trainer.Train(train, null, _ => { });
    }
}

/// <summary>Training over two silo processes; one is SIGKILLed after a checkpoint, and the survivor resumes from it and finishes.</summary>
public sealed class ClusterTrainingFailoverTests : IDisposable
{
    private readonly DirectoryInfo _directory = Directory.CreateTempSubdirectory("granary-training-failover-");

    public void Dispose() => _directory.Delete(recursive: true);

    [Fact]
    public async Task Killing_a_training_silo_after_a_checkpoint_resumes_on_the_survivor_and_finishes()
    {
        var model = BuiltInModel.EnsureCreated(TextWriter.Null);
        var data = _directory.CreateSubdirectory("data").FullName;
        await File.WriteAllLinesAsync(
            Path.Combine(data, "train.jsonl"),
            new[] { "The harvest came early.", "Bread from new wheat.", "The barn is full.", "Apples fall." }.Select(line => $"{{\"text\": \"{line}\"}}"));
        var job = new TrainingJob
        {
            DataDirectory = data,
            AdapterPath = Path.Combine(_directory.FullName, "adapters"),
            Iterations = 8,
            BatchSize = 1,
            LearningRate = 1e-3f,
            LoraRank = 2,
            LoraLayers = 1,
            SaveEvery = 2,
            MaxSequenceLength = 32,
        };
        var clusterId = $"test-{Guid.NewGuid():N}";
        var ports = SiloProcess.FreePorts(4);
        string[] common = ["--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", $"127.0.0.1:{ports[0]}"];
        using var alpha = await SiloProcess.StartAsync("alpha", ports[0], ports[1], common, TimeSpan.FromSeconds(90));
        using var beta = await SiloProcess.StartAsync("beta", ports[2], ports[3], common, TimeSpan.FromSeconds(90));
        await using var client = await Granary.Client.GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = clusterId;
            options.Gateways = [alpha.Gateway];
        });
        await ClusterWaits.WaitForStatusAsync(client, ClusterWaits.ActiveSilos(2), TimeSpan.FromSeconds(60), alpha, beta);

        var reports = new List<TrainingProgress>();
        using var deadline = new CancellationTokenSource(TimeSpan.FromMinutes(6));
        await foreach (var report in client.TrainAsync(model, job, deadline.Token))
        {
            reports.Add(report);
            if (report.Iteration == 3 && report.Restarts == 0)
            {
                beta.Kill();
            }
        }

        Assert.Equal(["alpha", "beta"], reports[0].Silos);
        var resumed = reports.SkipWhile(report => report.Restarts == 0).ToList();
        Assert.NotEmpty(resumed);
        // The coordinator re-formed the group on alpha; when the coordinator's activation was lost too (its directory
        // range was on beta), the client resumed the job on a new one, which counts as one more restart.
        Assert.All(resumed, report =>
        {
            Assert.InRange(report.Restarts, 1, 2);
            Assert.Equal(["alpha"], report.Silos);
        });
        // The survivor went on from a checkpoint, not from the start, and finished. Report 3 comes after checkpoint 2
        // was written, but the kill can land a step or two later (reports reach the client behind the steps), after
        // checkpoint 4 or 6: each is a valid place to resume, and the step after it is where the survivor begins.
        Assert.Contains(resumed[0].Iteration, new long[] { 3, 5, 7 });
        Assert.Equal(8L, resumed[^1].Iteration);
        Assert.True(File.Exists(Path.Combine(job.AdapterPath, AdapterFiles.WeightsFileName)));
    }
}
