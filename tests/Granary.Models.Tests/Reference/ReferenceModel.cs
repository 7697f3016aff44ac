using System.Text.Json;

namespace Granary.Models.Tests.Reference;

/// <summary>
/// A tiny model under tests/reference/models with what Hugging Face transformers computed for it in f32
/// (written by tests/reference/make_reference_models.py, copied next to the test assembly).
/// </summary>
internal sealed class ReferenceModel
{
    private ReferenceModel(string name, string directory, int[] promptIds, float[][] logits, int[] greedyTokens, float[][]? decodeLogits)
    {
        Name = name;
        Directory = directory;
        PromptIds = promptIds;
        Logits = logits;
        GreedyTokens = greedyTokens;
        DecodeLogits = decodeLogits;
    }

    public static string Root => Path.Combine(AppContext.BaseDirectory, "reference", "models");

    public string Name { get; }

    public string Directory { get; }

    public int[] PromptIds { get; }

    /// <summary>[prompt position][vocab].</summary>
    public float[][] Logits { get; }

    public int[] GreedyTokens { get; }

    /// <summary>Logits at each greedy step: row 0 after the prompt, row j after greedy token j-1; absent for some models.</summary>
    public float[][]? DecodeLogits { get; }

    public static IEnumerable<string> Names() =>
        System.IO.Directory.Exists(Root)
            ? System.IO.Directory.GetDirectories(Root)
                .Where(d => File.Exists(Path.Combine(d, "reference.json")))
                .Select(Path.GetFileName)
                .OfType<string>()
                .Order(StringComparer.Ordinal)
            : [];

    public static ReferenceModel Load(string name)
    {
        var directory = Path.Combine(Root, name);
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(directory, "reference.json")));
        var root = document.RootElement;
        return new ReferenceModel(
            name,
            directory,
            Ints(root.GetProperty("prompt_ids")),
            Rows(root.GetProperty("logits")),
            Ints(root.GetProperty("greedy_tokens")),
            root.TryGetProperty("decode_logits", out var decode) ? Rows(decode) : null);
    }

    private static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();

    private static float[][] Rows(JsonElement array) =>
        array.EnumerateArray().Select(row => row.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray();
}
