using System.Text.Json;
using Granary.Models;
using Granary.Models.Generation;
using Granary.Tensors;

namespace Granary.Runtime.Tests;

/// <summary>The tiny Qwen3 reference model (3 layers, vocab 256, no tokenizer) with its transformers greedy tokens.</summary>
internal static class TinyModel
{
    public static string Directory { get; } = Path.Combine(AppContext.BaseDirectory, "reference", "models", "qwen3");

    public static int[] PromptIds => Reference.PromptIds;

    /// <summary>20 greedy tokens from Hugging Face transformers, end-of-sequence ignored.</summary>
    public static int[] GreedyTokens => Reference.GreedyTokens;

    private static (int[] PromptIds, int[] GreedyTokens) Reference { get; } = ReadReference();

    /// <summary>Greedy tokens of the single-process engine, the baseline every cluster run must equal.</summary>
    public static int[] GenerateInProcess(int[] promptIds, int maxTokens)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(Directory, backend);
        var generator = new TextGenerator(loaded.Model, loaded.Tokenizer);
        var request = new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = maxTokens,
            Sampling = SamplingOptions.Greedy,
            StopAtEndOfSequence = false,
        };
        return [.. generator.Generate(request).Where(token => token.HasToken).Select(token => token.Id)];
    }

    private static (int[], int[]) ReadReference()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(Directory, "reference.json")));
        var root = document.RootElement;
        return (
            [.. root.GetProperty("prompt_ids").EnumerateArray().Select(id => id.GetInt32())],
            [.. root.GetProperty("greedy_tokens").EnumerateArray().Select(id => id.GetInt32())]);
    }
}
