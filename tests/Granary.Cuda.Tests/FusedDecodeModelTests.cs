using System.Text.Json;
using Granary.Models;

namespace Granary.Cuda.Tests;

/// <summary>
/// The model's fused decode step (CausalLanguageModel.FusedDecode: stacked q|k|v and gate|up, 9 backend calls a layer,
/// recorded once as a CUDA graph and replayed) against the plain one-call-per-operation path on the same GPU and
/// against transformers' greedy tokens (tests/reference/models). Each reference model either runs fused or, where it
/// cannot (mixtures of experts, quantized layers), says so and keeps the plain path.
/// </summary>
[Collection("gpu")]
public sealed class FusedDecodeModelTests
{
    // Both paths compute in f32 from the same weights; only the order of some sums differs.
    private const double PathTolerance = 1e-4;
    private const double ReferenceTolerance = 1e-3;

    private static readonly string[] FusedModels = ["llama", "llama_bf16", "llama_tied", "qwen2", "qwen3", "qwen3_bf16"];

    public static TheoryData<string> Models() => new(Directory.GetDirectories(ModelTests.ReferenceRoot()).Select(Path.GetFileName).Order()!);

    [Theory]
    [MemberData(nameof(Models))]
    public void FusedDecodeIsUsedExactlyWhereTheModelQualifies(string name)
    {
        using var loaded = ModelLoader.Load(Path.Combine(ModelTests.ReferenceRoot(), name), Gpu.Backend);
        Assert.Equal(FusedModels.Contains(name), loaded.Model.FusedDecode);
        if (!loaded.Model.FusedDecode)
        {
            Assert.Throws<InvalidOperationException>(() => loaded.Model.FusedDecode = true);
        }
    }

    /// <summary>
    /// 20 greedy tokens twice through the fused step (the second time on the same cache after a reset, so it replays
    /// the recordings of the first) and once through the plain path: every step's logits agree, the tokens equal
    /// transformers' and, where recorded, the logits are within 1e-3 of transformers' decode logits.
    /// </summary>
    [Theory]
    [MemberData(nameof(FusedModelNames))]
    public void FusedGreedyDecodeMatchesPlainPathAndTransformers(string name)
    {
        var directory = Path.Combine(ModelTests.ReferenceRoot(), name);
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(directory, "reference.json")));
        var reference = document.RootElement;
        var prompt = reference.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var expectedTokens = reference.GetProperty("greedy_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        float[][]? decodeLogits = reference.TryGetProperty("decode_logits", out var decode)
            ? decode.EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray()
            : null;
        using var loaded = ModelLoader.Load(directory, Gpu.Backend);
        var model = loaded.Model;
        Assert.True(model.FusedDecode);

        model.FusedDecode = false;
        using var plainCache = model.CreateCache(64);
        var (plainTokens, plainLogits) = Greedy(model, plainCache, prompt, expectedTokens.Length);

        model.FusedDecode = true;
        using var cache = model.CreateCache(64);
        for (var run = 0; run < 2; run++)
        {
            cache.Reset();
            var (tokens, logits) = Greedy(model, cache, prompt, expectedTokens.Length);
            Assert.Null(model.FusedDecodeRecordingFailure);
            Assert.Equal(expectedTokens, tokens);
            Assert.Equal(plainTokens, tokens);
            for (var step = 0; step < logits.Length; step++)
            {
                AssertWithin(plainLogits[step], logits[step], PathTolerance, $"{name} run {run} step {step} fused vs plain");
                if (decodeLogits is not null)
                {
                    AssertWithin(decodeLogits[step], logits[step], ReferenceTolerance, $"{name} run {run} step {step} fused vs transformers");
                }
            }
        }
    }

    /// <summary>
    /// Teacher-forced decode past several recording ranges (the attention bound doubles from 256 up to the cache's
    /// capacity of 600): the fused step's logits follow the plain path's at every position.
    /// </summary>
    [Fact]
    public void FusedDecodeFollowsPlainPathAcrossRecordingRanges()
    {
        const int Steps = 580;
        using var loaded = ModelLoader.Load(Path.Combine(ModelTests.ReferenceRoot(), "qwen3_bf16"), Gpu.Backend);
        var model = loaded.Model;
        var vocabulary = model.Config.VocabularySize;
        var tokens = Enumerable.Range(0, Steps).Select(i => (i * 37 + 11) % vocabulary).ToArray();
        var plain = new float[vocabulary];
        var fused = new float[vocabulary];
        using var plainCache = model.CreateCache(600);
        using var fusedCache = model.CreateCache(600);
        for (var step = 0; step < Steps; step++)
        {
            model.FusedDecode = false;
            model.Forward([tokens[step]], plainCache, plain);
            model.FusedDecode = true;
            model.Forward([tokens[step]], fusedCache, fused);
            AssertWithin(plain, fused, PathTolerance, $"position {step}");
        }

        Assert.Equal(Steps, fusedCache.Length);
        Assert.Null(model.FusedDecodeRecordingFailure);
    }

    public static TheoryData<string> FusedModelNames() => new(FusedModels);

    private static (int[] Tokens, float[][] Logits) Greedy(CausalLanguageModel model, KvCache cache, int[] prompt, int count)
    {
        var logits = new float[model.Config.VocabularySize];
        model.Forward(prompt, cache, logits);
        var tokens = new int[count];
        var steps = new float[count][];
        for (var step = 0; step < count; step++)
        {
            steps[step] = (float[])logits.Clone();
            tokens[step] = Array.IndexOf(logits, logits.Max());
            model.Forward([tokens[step]], cache, logits);
        }

        return (tokens, steps);
    }

    private static void AssertWithin(float[] expected, float[] actual, double tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = 0.0;
        for (var i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"{what}: logit {i} is NaN.");
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
        }

        Assert.True(worst < tolerance, $"{what}: max |logit difference| {worst:E3} ≥ {tolerance}.");
    }
}
