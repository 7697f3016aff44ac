namespace Granary.Training.Tests;

public sealed class TrainerTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("granary-trainer-").FullName;

    [Fact]
    public void TrainingLowersTheLossAndResumeContinuesExactly()
    {
        using var loaded = ReferenceData.LoadModel("llama_tied");
        var data = Examples();
        TrainerOptions Options(string path, int iterations, bool resume) => new()
        {
            BatchSize = 2, Iterations = iterations, LearningRate = 1e-2f, WarmupSteps = 2, CosineDecay = true, StepsPerReport = 1,
            StepsPerEval = 3, SaveEvery = 3, AdapterPath = path, Resume = resume, MaxGradientNorm = 1.0, GradientAccumulationSteps = 2,
        };
        var lora = new FineTuneOptions { Lora = new LoraOptions { Rank = 4, Scale = 2, LayerCount = 1 } };

        var straight = TrainingModel.Create(loaded.Model, lora);
        var reports = new Trainer(straight, Options(Path.Combine(_directory, "straight"), 6, resume: false)).Train(data, data[..4], _ => { });

        Assert.Equal(6, reports.Count);
        Assert.True(reports[^1].TrainLoss < reports[0].TrainLoss, $"loss {reports[0].TrainLoss} -> {reports[^1].TrainLoss}");
        Assert.NotNull(reports[2].ValidationLoss);
        Assert.All(reports, r => Assert.True(r.TokensPerSecond > 0 && r.PeakMemoryBytes > 0));

        var interruptedPath = Path.Combine(_directory, "interrupted");
        new Trainer(TrainingModel.Create(loaded.Model, lora), Options(interruptedPath, 3, resume: false)).Train(data, null, _ => { });
        var resumed = TrainingModel.Create(loaded.Model, lora);
        new Trainer(resumed, Options(interruptedPath, 6, resume: true)).Train(data, null, _ => { });

        var expected = straight.TrainableParameters;
        var actual = resumed.TrainableParameters;
        for (var i = 0; i < expected.Count; i++)
        {
            Assert.Equal(expected[i].Value, actual[i].Value);
        }
    }

    [Theory]
    [InlineData("llama", FineTuneType.Lora, 1e-5)]
    [InlineData("qwen3_q4_g64", FineTuneType.Lora, 2e-2)]
    [InlineData("qwen2", FineTuneType.Dora, 1e-5)]
    [InlineData("qwen3_q4_g64", FineTuneType.Dora, 2e-2)]
    [InlineData("qwen3_moe", FineTuneType.Lora, 1e-5)]
    public void FusedModelComputesWhatTheAdaptersDid(string name, FineTuneType type, double tolerance)
    {
        using var reference = ReferenceData.Load(name);
        var modelDirectory = Path.Combine(ReferenceData.ModelsRoot, name);
        var adapters = Path.Combine(_directory, $"adapters-{name}-{type}");
        var fused = Path.Combine(_directory, $"fused-{name}-{type}");
        var batch = reference.Batch();
        double adaptedLoss;
        using (var loaded = ReferenceData.LoadModel(name))
        {
            var options = reference.LoraOptions();
            options.Type = type;
            if (name == "qwen3_moe")
            {
                // The router and every expert, saved per expert and fused into each expert's weights.
                options.Lora.Keys = TestAdapters.MixtureKeys;
            }

            var model = TrainingModel.Create(loaded.Model, options);
            if (type == FineTuneType.Lora && name != "qwen3_moe")
            {
                reference.SetInitialAdapters(model);
            }
            else
            {
                TestAdapters.Randomize(model, seed: 4);
            }

            adaptedLoss = model.Evaluate(batch).LossSum;
            AdapterFiles.Save(model, adapters);
        }

        ModelFusion.Fuse(modelDirectory, adapters, fused);

        using var fusedModel = Granary.Models.ModelLoader.Load(fused, new Granary.Tensors.Cpu.CpuBackend(2));
        var plain = TrainingModel.Create(fusedModel.Model, new FineTuneOptions { Lora = new LoraOptions { Rank = 1 } });
        var fusedLoss = plain.Evaluate(batch).LossSum;
        Assert.True(Math.Abs(fusedLoss - adaptedLoss) < tolerance * adaptedLoss, $"fused {fusedLoss} vs adapters {adaptedLoss}");
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static TrainingExample[] Examples()
    {
        var random = new Random(3);
        return [.. Enumerable.Range(0, 12).Select(i => new TrainingExample([.. Enumerable.Range(0, 6 + (i % 5)).Select(_ => random.Next(3, 40))], 2))];
    }
}
