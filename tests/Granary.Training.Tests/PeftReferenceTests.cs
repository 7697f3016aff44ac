using Xunit.Abstractions;

namespace Granary.Training.Tests;

/// <summary>Loss, LoRA gradients and 5 AdamW steps against transformers + peft (tests/reference/training).</summary>
public sealed class PeftReferenceTests(ITestOutputHelper output)
{
    // qwen3_moe's own entry holds peft's fused-expert adapters (see tests/reference/training/README.md); its LoRA is
    // checked through the qwen3_moe_experts variant, its full fine-tuning below.
    public static TheoryData<string> Models => new() { "llama", "llama_tied", "qwen2", "qwen3", "qwen3_q4_g64" };

    [Theory]
    [MemberData(nameof(Models))]
    public void LossAndLoraGradientsMatchPeft(string name) => CheckLossAndGradients(name);

    [Theory]
    [MemberData(nameof(Models))]
    public void FiveAdamWStepsMatchTorch(string name) => CheckAdamW(name);

    // LoRA on attention, the router and every expert's gate/up/down of Qwen3-MoE; gradients pass through the router's
    // softmax, top-k and renormalisation as transformers computes them.
    [PeftReferenceFact("qwen3_moe_experts")]
    public void MixtureExpertAndRouterLoraGradientsMatchPeft() => CheckLossAndGradients("qwen3_moe_experts");

    [PeftReferenceFact("qwen3_moe_experts")]
    public void MixtureExpertAndRouterLoraFiveAdamWStepsMatchTorch() => CheckAdamW("qwen3_moe_experts");

    [PeftReferenceFact("qwen3_dora")]
    public void DoraGradientsMatchPeft() => CheckLossAndGradients("qwen3_dora");

    [PeftReferenceFact("qwen3_dora")]
    public void DoraFiveAdamWStepsMatchTorch() => CheckAdamW("qwen3_dora");

    private void CheckLossAndGradients(string name)
    {
        using var reference = ReferenceData.Load(name);
        using var loaded = reference.LoadModel();
        var model = TrainingModel.Create(loaded.Model, reference.LoraOptions());
        reference.SetInitialAdapters(model);
        var batch = reference.Batch();
        var targets = batch.Targets().Targets.Length;

        var (lossSum, tokens) = model.AccumulateGradients(batch, 1f / targets);

        Assert.Equal(targets, tokens);
        Assert.Equal(reference.Loss, lossSum / tokens, 1e-5 * reference.Loss);
        var adapted = model.AdaptedLinears;
        var worst = 0.0;
        var compared = 0;
        foreach (var module in reference.Modules)
        {
            foreach (var (parameter, part) in ReferenceData.Parts(adapted[module].Lora!))
            {
                var expected = reference.Tensor($"lora_grad/{module}.{part}");
                var error = Norms.RelativeError(parameter.Gradient, expected);
                Assert.True(error < 1e-4, $"{name} {module}.{part}: relative gradient error {error:E2}");
                worst = Math.Max(worst, error);
                compared++;
            }
        }

        output.WriteLine($"{name}: loss {lossSum / tokens:R} vs peft {reference.Loss:R}; worst relative error of {compared} adapter gradients {worst:E2}");
    }

    private void CheckAdamW(string name)
    {
        using var reference = ReferenceData.Load(name);
        using var loaded = reference.LoadModel();
        var model = TrainingModel.Create(loaded.Model, reference.LoraOptions());
        reference.SetInitialAdapters(model);
        var batch = reference.Batch();
        var settings = reference.Summary.GetProperty("adamw");
        var betas = settings.GetProperty("betas").EnumerateArray().Select(b => (float)b.GetDouble()).ToArray();
        var optimizer = new AdamW(
            model.TrainableParameters, betas[0], betas[1], (float)settings.GetProperty("eps").GetDouble(), (float)settings.GetProperty("weight_decay").GetDouble());
        var learningRate = (float)settings.GetProperty("lr").GetDouble();
        var expectedLosses = reference.Summary.GetProperty("adamw_losses").EnumerateArray().Select(l => l.GetDouble()).ToArray();
        var targets = batch.Targets().Targets.Length;

        for (var step = 0; step < expectedLosses.Length; step++)
        {
            model.ZeroGradients();
            var (lossSum, tokens) = model.AccumulateGradients(batch, 1f / targets);
            var loss = lossSum / tokens;
            Assert.True(Math.Abs(loss - expectedLosses[step]) < 1e-4 * Math.Max(1, expectedLosses[step]), $"{name} step {step}: loss {loss} vs torch {expectedLosses[step]}");
            if (step < expectedLosses.Length - 1)
            {
                optimizer.Update(learningRate);
            }
        }

        foreach (var module in reference.Modules)
        {
            foreach (var (parameter, part) in ReferenceData.Parts(model.AdaptedLinears[module].Lora!))
            {
                // Adam divides each gradient element by its own magnitude, so elements whose gradient is at f32 noise
                // level move by a whole learning rate either way. The router's adapter has such elements (softmax over
                // near-tied expert scores); its gradients still match peft within 1e-4 and every loss matches.
                var tolerance = module.EndsWith(".mlp.gate", StringComparison.Ordinal) ? 1e-2 : 1e-4;
                var error = Norms.RelativeError(parameter.Value, reference.Tensor($"lora_adamw/{module}.{part}"));
                Assert.True(error < tolerance, $"{name} {module}.{part} after AdamW: relative error {error:E2}");
            }
        }

        output.WriteLine($"{name}: {expectedLosses.Length - 1} AdamW steps, losses {string.Join(", ", expectedLosses.Select(l => l.ToString("F4", System.Globalization.CultureInfo.InvariantCulture)))} matched");
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("llama_tied")]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("qwen3_moe")]
    public void FullFineTuningGradientsMatchTorch(string name)
    {
        using var reference = ReferenceData.Load(name);
        using var loaded = ReferenceData.LoadModel(name);
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions { Type = FineTuneType.Full });
        var batch = reference.Batch();
        var targets = batch.Targets().Targets.Length;

        var (lossSum, _) = model.AccumulateGradients(batch, 1f / targets);

        Assert.Equal(reference.Summary.GetProperty("full_finetune_loss").GetDouble(), lossSum / targets, 1e-5 * reference.Loss);
        var compared = 0;
        foreach (var parameter in model.TrainableParameters)
        {
            if (FusedExpertGradient(reference, parameter.Name, loaded.Model.Config.MixtureOfExperts?.ExpertCount ?? 0) is { } fused)
            {
                var fusedError = Norms.RelativeError(parameter.Gradient, fused);
                Assert.True(fusedError < 1e-4, $"{name} {parameter.Name}: relative gradient error {fusedError:E2}");
                compared++;
                continue;
            }

            var expectedName = "full_grad/" + (parameter.Name == "lm_head.weight" && loaded.Model.Config.TieWordEmbeddings ? "model.embed_tokens.weight" : parameter.Name);
            Assert.True(reference.Has(expectedName), $"{name}: no reference gradient {expectedName}");
            var error = Norms.RelativeError(parameter.Gradient, reference.Tensor(expectedName));
            Assert.True(error < 1e-4, $"{name} {parameter.Name}: relative gradient error {error:E2}");
            compared++;
        }

        Assert.True(compared > 10);
        output.WriteLine($"{name}: {compared} full fine-tuning gradients within 1e-4 of torch");
    }

    // transformers 5 stores a layer's experts fused: gate_up_proj [E, 2I, H] (gate rows first) and down_proj [E, H, I].
    private static float[]? FusedExpertGradient(ReferenceData reference, string name, int experts)
    {
        var match = System.Text.RegularExpressions.Regex.Match(name, @"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(gate|up|down)_proj\.weight$");
        if (!match.Success)
        {
            return null;
        }

        var expert = int.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        var part = match.Groups[3].Value;
        var fused = reference.Tensor($"full_grad/{match.Groups[1].Value}.{(part == "down" ? "down_proj" : "gate_up_proj")}");
        var perExpert = fused.Length / experts;
        var slice = fused.AsSpan(expert * perExpert, perExpert);
        return part switch
        {
            "gate" => slice[..(perExpert / 2)].ToArray(),
            "up" => slice[(perExpert / 2)..].ToArray(),
            _ => slice.ToArray(),
        };
    }
}

/// <summary>
/// A test that needs outputs of make_training_reference.py which have not been made yet: skipped, saying how to make
/// them, until tests/reference/training holds them.
/// </summary>
public sealed class PeftReferenceFactAttribute : FactAttribute
{
    public PeftReferenceFactAttribute(string reference)
    {
        if (!ReferenceData.Exists(reference))
        {
            Skip = $"tests/reference/training/{reference}.json/.safetensors are missing: run "
                + $"`python3 tests/reference/training/make_training_reference.py --only {reference}` (torch, transformers, peft) and commit its outputs.";
        }
    }
}
