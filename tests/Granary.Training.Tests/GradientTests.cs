namespace Granary.Training.Tests;

/// <summary>Analytic gradients against central finite differences, and invariances of the training step.</summary>
public sealed class GradientTests
{
    [Theory]
    [InlineData("llama", FineTuneType.Lora, 0.0f, false)]
    [InlineData("qwen2", FineTuneType.Lora, 0.2f, true)]
    [InlineData("qwen2", FineTuneType.Dora, 0.2f, false)]
    [InlineData("qwen3_moe", FineTuneType.Full, 0.0f, false)]
    [InlineData("qwen3_q4_g64", FineTuneType.Lora, 0.0f, true)]
    [InlineData("qwen3_q4_g64", FineTuneType.Dora, 0.0f, true)]
    [InlineData("llama_tied", FineTuneType.Full, 0.0f, true)]
    public void GradientMatchesFiniteDifferences(string name, FineTuneType type, float dropout, bool checkpointing)
    {
        using var reference = ReferenceData.Load(name);
        using var loaded = ReferenceData.LoadModel(name);
        var options = reference.LoraOptions();
        options.Type = type;
        options.Lora.Dropout = dropout;
        options.GradientCheckpointing = checkpointing;
        var model = TrainingModel.Create(loaded.Model, options);
        if (type == FineTuneType.Lora)
        {
            reference.SetInitialAdapters(model);
        }
        else if (type == FineTuneType.Dora)
        {
            TestAdapters.Randomize(model, seed: 3);
        }

        const ulong seed = 11;
        model.AccumulateGradients(reference.Batch(), 1f, seed);

        AssertSlopeMatchesFiniteDifference(model, model.TrainableParameters, reference.Batch(), seed, name);
    }

    // LoRA (and DoRA) on the router and every expert of the Qwen3-MoE layers, and on attention: each group's slope on
    // its own, so the router's small share cannot hide behind the experts'.
    [Theory]
    [InlineData(FineTuneType.Lora, false)]
    [InlineData(FineTuneType.Dora, true)]
    public void MixtureAdapterGradientsMatchFiniteDifferences(FineTuneType type, bool checkpointing)
    {
        using var reference = ReferenceData.Load("qwen3_moe");
        using var loaded = ReferenceData.LoadModel("qwen3_moe");
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions
        {
            Type = type, GradientCheckpointing = checkpointing, Lora = new LoraOptions { Rank = 4, Scale = 2, Keys = TestAdapters.MixtureKeys },
        });
        TestAdapters.Randomize(model, seed: 3);
        const ulong seed = 0;
        model.AccumulateGradients(reference.Batch(), 1f, seed);

        var groups = new (string Group, Func<Parameter, bool> Member)[]
        {
            ("router", p => p.Name.Contains(".mlp.gate.", StringComparison.Ordinal)),
            ("experts", p => p.Name.Contains(".mlp.experts.", StringComparison.Ordinal)),
            ("attention", p => p.Name.Contains(".self_attn.", StringComparison.Ordinal)),
            ("magnitudes", p => p.Name.EndsWith(".m", StringComparison.Ordinal)),
        };
        foreach (var (group, member) in groups)
        {
            var parameters = model.TrainableParameters.Where(member).ToArray();
            if (group == "magnitudes" && type == FineTuneType.Lora)
            {
                Assert.Empty(parameters);
                continue;
            }

            Assert.NotEmpty(parameters);
            AssertSlopeMatchesFiniteDifference(model, parameters, reference.Batch(), seed, $"qwen3_moe {type} {group}");
        }
    }

    [Fact]
    public void MixtureKeysReachEveryExpertAndTheRouter()
    {
        using var loaded = ReferenceData.LoadModel("qwen3_moe");
        string[] mixtureLayers = ["0", "2"];  // layer 1 is in mlp_only_layers: a dense MLP
        var experts = Enumerable.Range(0, 8).ToArray();

        var routerAndExperts = TrainingModel.Create(loaded.Model, new FineTuneOptions { Lora = new LoraOptions { Rank = 2, Keys = ["mlp.gate", "mlp.experts.down_proj"] } });
        var everyDown = TrainingModel.Create(loaded.Model, new FineTuneOptions { Lora = new LoraOptions { Rank = 2, Keys = ["mlp.down_proj"] } });

        Assert.Equal(
            mixtureLayers.SelectMany(l => experts.Select(e => $"model.layers.{l}.mlp.experts.{e}.down_proj").Append($"model.layers.{l}.mlp.gate")).Order(StringComparer.Ordinal),
            routerAndExperts.AdaptedLinears.Keys.Order(StringComparer.Ordinal));
        Assert.Equal(
            mixtureLayers.SelectMany(l => experts.Select(e => $"model.layers.{l}.mlp.experts.{e}.down_proj")).Append("model.layers.1.mlp.down_proj").Order(StringComparer.Ordinal),
            everyDown.AdaptedLinears.Keys.Order(StringComparer.Ordinal));
        var distinct = routerAndExperts.TrainableParameters.Select(p => p.Value).Distinct(ReferenceEqualityComparer.Instance).Count();
        Assert.Equal(routerAndExperts.TrainableParameters.Count, distinct);
    }

    [Fact]
    public void DoraStartsAsTheBaseModel()
    {
        using var reference = ReferenceData.Load("qwen2");
        using var loaded = ReferenceData.LoadModel("qwen2");
        var batch = reference.Batch();
        var plain = TrainingModel.Create(loaded.Model, new FineTuneOptions { Type = FineTuneType.Lora });
        var dora = TrainingModel.Create(loaded.Model, new FineTuneOptions { Type = FineTuneType.Dora });

        var expected = plain.Evaluate(batch).LossSum;
        var actual = dora.Evaluate(batch).LossSum;

        Assert.Equal(expected, actual, 1e-5 * expected);
        var query = dora.AdaptedLinears["model.layers.0.self_attn.q_proj"];
        Assert.Equal(query.OutFeatures, query.Lora!.Magnitude!.Value.Length);
        Assert.All(dora.AdaptedLinears.Values, l => Assert.All(l.Lora!.Magnitude!.Value, m => Assert.True(m > 0)));
    }

    [Fact]
    public void CheckpointingAndAccumulationGiveTheSameGradients()
    {
        using var reference = ReferenceData.Load("qwen3");
        using var loaded = ReferenceData.LoadModel("qwen3");
        var batch = reference.Batch();
        var targets = batch.Targets().Targets.Length;

        var plain = TrainingModel.Create(loaded.Model, reference.LoraOptions());
        reference.SetInitialAdapters(plain);
        plain.AccumulateGradients(batch, 1f / targets);

        var checkpointingOptions = reference.LoraOptions();
        checkpointingOptions.GradientCheckpointing = true;
        var checkpointed = TrainingModel.Create(loaded.Model, checkpointingOptions);
        reference.SetInitialAdapters(checkpointed);
        foreach (var half in new[] { batch.Slice(0, 1), batch.Slice(1, 1) })
        {
            checkpointed.AccumulateGradients(half, 1f / targets);
        }

        var expected = plain.TrainableParameters;
        var actual = checkpointed.TrainableParameters;
        Assert.Equal(expected.Count, actual.Count);
        for (var i = 0; i < expected.Count; i++)
        {
            Assert.True(Norms.RelativeError(actual[i].Gradient, expected[i].Gradient) < 1e-5, expected[i].Name);
        }
    }

    [Fact]
    public void NumLayersAdaptsOnlyTheLastLayers()
    {
        using var loaded = ReferenceData.LoadModel("llama");
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions { Lora = new LoraOptions { Rank = 2, LayerCount = 1, Keys = ["self_attn.v_proj", "mlp.down_proj"] } });

        Assert.Equal(["model.layers.2.mlp.down_proj", "model.layers.2.self_attn.v_proj"], model.AdaptedLinears.Keys.Order(StringComparer.Ordinal));
        Assert.All(model.TrainableParameters, p => Assert.StartsWith("model.layers.2.", p.Name));
        Assert.Throws<ArgumentException>(() => TrainingModel.Create(loaded.Model, new FineTuneOptions { Lora = new LoraOptions { Keys = ["self_attn.qkv"] } }));
    }

    /// <summary>
    /// The gradients already accumulated in <paramref name="parameters"/> against central differences of the loss along
    /// a random unit direction over them.
    /// </summary>
    private static void AssertSlopeMatchesFiniteDifference(TrainingModel model, IReadOnlyList<Parameter> parameters, TokenBatch batch, ulong seed, string label)
    {
        var gradients = parameters.Select(p => (float[])p.Gradient!.Clone()).ToArray();
        var random = new Random(5);
        var directions = parameters.Select(p => p.Value.Select(_ => (float)random.NextDouble() - 0.5f).ToArray()).ToArray();
        var norm = Math.Sqrt(directions.Sum(d => d.Sum(x => (double)x * x)));
        double analytic = 0;
        for (var i = 0; i < parameters.Count; i++)
        {
            for (var j = 0; j < directions[i].Length; j++)
            {
                directions[i][j] = (float)(directions[i][j] / norm);
                analytic += gradients[i][j] * (double)directions[i][j];
            }
        }

        const float step = 1e-2f;
        var plus = LossAfterShift(model, parameters, directions, step, batch, seed);
        var minus = LossAfterShift(model, parameters, directions, -step, batch, seed);
        var numeric = (plus - minus) / (2 * step);

        Assert.True(Math.Abs(analytic) > 1e-3, $"{label}: slope {analytic} too small to test");
        Assert.True(Math.Abs(numeric - analytic) < 1e-2 * Math.Abs(analytic), $"{label}: finite difference {numeric} vs analytic {analytic}");
    }

    private static double LossAfterShift(TrainingModel model, IReadOnlyList<Parameter> parameters, float[][] directions, float step, TokenBatch batch, ulong seed)
    {
        // DoRA's gradient treats ||W + scale B A|| as a constant (as peft and mlx_lm do), so the function to difference
        // keeps each layer's factor m / ||W + scale B A|| at the unshifted norms: m is scaled by new norm / old norm.
        var decomposed = model.AdaptedLinears.Values.Where(l => l.Lora!.Magnitude is not null).ToArray();
        var unshiftedNorms = decomposed.Select(l => l.AdaptedRowNorms()).ToArray();
        var saved = parameters.Concat(decomposed.Select(l => l.Lora!.Magnitude!)).Distinct().Select(p => (p, (float[])p.Value.Clone())).ToArray();
        for (var i = 0; i < parameters.Count; i++)
        {
            System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(directions[i], step, parameters[i].Value, parameters[i].Value);
        }

        for (var i = 0; i < decomposed.Length; i++)
        {
            var magnitude = decomposed[i].Lora!.Magnitude!.Value;
            var shiftedNorms = decomposed[i].AdaptedRowNorms();
            for (var o = 0; o < magnitude.Length; o++)
            {
                magnitude[o] *= shiftedNorms[o] / unshiftedNorms[i][o];
            }
        }

        // The training forward, so dropout draws the same mask as the gradient did.
        var (loss, _) = model.AccumulateGradients(batch, 0f, seed);
        foreach (var (parameter, values) in saved)
        {
            values.CopyTo(parameter.Value, 0);
        }

        return loss;
    }
}

public sealed class OptimizerTests
{
    [Fact]
    public void ScheduleWarmsUpLinearlyThenFollowsTheCosine()
    {
        var schedule = new LearningRateSchedule(peak: 1e-3f, warmupSteps: 10, decaySteps: 100, final: 1e-4f);

        Assert.Equal(0f, schedule.At(0));
        Assert.Equal(5e-4f, schedule.At(5), 1e-9f);
        Assert.Equal(1e-3f, schedule.At(10), 1e-9f);
        Assert.Equal(1e-4f + (0.9e-3f * 0.5f), schedule.At(60), 1e-8f);
        Assert.Equal(1e-4f, schedule.At(110), 1e-9f);
        Assert.Equal(1e-4f, schedule.At(500), 1e-9f);
    }

    [Fact]
    public void ClippingScalesToTheMaximumGlobalNorm()
    {
        var a = new Parameter("a", [0, 0], [2], trainable: true);
        var b = new Parameter("b", [0], [1], trainable: true);
        a.Gradient![0] = 3;
        b.Gradient![0] = 4;

        var norm = GradientClipping.ClipByGlobalNorm([a, b], 1.0);

        Assert.Equal(5.0, norm, 1e-9);
        Assert.Equal(1.0, GradientClipping.GlobalNorm([a, b]), 1e-5);
        Assert.Equal(0.6f, a.Gradient[0], 1e-5f);
    }

    [Fact]
    public void SgdWithMomentumFollowsTorch()
    {
        // torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), gradient 1 then 1: p = 1 - 0.101 - 0.1*(0.9*1.01 + 1.00899).
        var p = new Parameter("p", [1f], [1], trainable: true);
        var sgd = new Sgd([p], momentum: 0.9f, weightDecay: 0.01f);
        p.Gradient![0] = 1;
        sgd.Update(0.1f);
        Assert.Equal(1 - 0.101f, p.Value[0], 1e-6f);
        sgd.Update(0.1f);
        Assert.Equal(0.899f - (0.1f * ((0.9f * 1.01f) + 1 + (0.01f * 0.899f))), p.Value[0], 1e-6f);
    }
}
