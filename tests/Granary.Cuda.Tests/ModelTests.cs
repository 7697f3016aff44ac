using System.Text.Json;
using Granary.Models;

namespace Granary.Cuda.Tests;

/// <summary>
/// Whole models on the GPU against transformers' f32 logits (tests/reference/models): every prompt position after a
/// prefill (GEMM path), greedy decoding token by token (GEMV path, KV cache) and, where recorded, each decode step's
/// logits. bf16 and MLX-quantized references are f32 math on the stored weights, so one tolerance holds for all.
/// </summary>
[Collection("gpu")]
public sealed class ModelTests
{
    private const double Tolerance = 1e-3;

    public static TheoryData<string> Models() => new(Directory.GetDirectories(ReferenceRoot()).Select(Path.GetFileName).Order()!);

    [Theory]
    [MemberData(nameof(Models))]
    public void PromptLogitsMatchTransformers(string name)
    {
        var gpu = Gpu.Backend;
        var reference = Reference.Load(name);
        using var loaded = ModelLoader.Load(Path.Combine(ReferenceRoot(), name), gpu);
        var model = loaded.Model;
        using var cache = model.CreateCache(64);
        var logits = model.ForwardAllPositions(reference.PromptIds, cache);
        var vocabulary = model.Config.VocabularySize;
        for (var position = 0; position < reference.PromptIds.Length; position++)
        {
            AssertWithin(reference.Logits[position], logits.AsSpan(position * vocabulary, vocabulary), $"{name} prompt position {position}");
        }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void GreedyDecodeMatchesTransformers(string name)
    {
        var gpu = Gpu.Backend;
        var reference = Reference.Load(name);
        using var loaded = ModelLoader.Load(Path.Combine(ReferenceRoot(), name), gpu);
        var model = loaded.Model;
        using var cache = model.CreateCache(64);
        var logits = new float[model.Config.VocabularySize];
        model.Forward(reference.PromptIds, cache, logits);
        var tokens = new List<int>();
        for (var step = 0; step < reference.GreedyTokens.Length; step++)
        {
            if (reference.DecodeLogits is { } decode)
            {
                AssertWithin(decode[step], logits, $"{name} decode step {step}");
            }

            var next = Array.IndexOf(logits, logits.Max());
            tokens.Add(next);
            model.Forward([next], cache, logits);
        }

        Assert.Equal(reference.GreedyTokens, tokens);
    }

    private static void AssertWithin(float[] expected, ReadOnlySpan<float> actual, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = 0.0;
        for (var i = 0; i < expected.Length; i++)
        {
            Assert.False(float.IsNaN(actual[i]), $"{what}: logit {i} is NaN.");
            worst = Math.Max(worst, Math.Abs(actual[i] - expected[i]));
        }

        Assert.True(worst < Tolerance, $"{what}: max |logit error| {worst:E3} ≥ {Tolerance}.");
    }

    internal static string ReferenceRoot()
    {
        foreach (var start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
        {
            for (var directory = new DirectoryInfo(start); directory is not null; directory = directory.Parent)
            {
                var candidate = Path.Combine(directory.FullName, "tests", "reference", "models");
                if (Directory.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        var built = typeof(ModelTests).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyMetadataAttribute), false)
            .Cast<System.Reflection.AssemblyMetadataAttribute>().Single(a => a.Key == "ReferenceModels").Value;
        return Directory.Exists(built)
            ? built!
            : throw new DirectoryNotFoundException($"tests/reference/models is neither above the working or base directory nor at {built}.");
    }

    private sealed record Reference(int[] PromptIds, float[][] Logits, int[] GreedyTokens, float[][]? DecodeLogits)
    {
        public static Reference Load(string name)
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(ReferenceRoot(), name, "reference.json")));
            var root = document.RootElement;
            return new Reference(
                root.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                Rows(root.GetProperty("logits")),
                root.GetProperty("greedy_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray(),
                root.TryGetProperty("decode_logits", out var decode) ? Rows(decode) : null);
        }

        private static float[][] Rows(JsonElement rows) =>
            rows.EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray();
    }
}
