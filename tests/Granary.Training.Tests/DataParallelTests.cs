using System.Net;
using System.Net.Sockets;
using Granary.Collectives;

namespace Granary.Training.Tests;

public sealed class DataParallelTests
{
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

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
