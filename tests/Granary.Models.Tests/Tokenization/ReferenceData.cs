using System.Runtime.CompilerServices;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>Ids and chat strings produced by Hugging Face tokenizers/transformers (tests/reference/tokenizers/make_reference_ids.py).</summary>
internal static class ReferenceData
{
    private static readonly JsonSerializerOptions s_json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };
    private static readonly Lazy<Dictionary<string, ReferenceEncoding[]>> s_ids = new(() => Read<Dictionary<string, ReferenceEncoding[]>>("expected_ids.json"));
    private static readonly Lazy<ReferenceChat> s_chat = new(() => Read<ReferenceChat>("expected_chat.json"));

    public static IReadOnlyList<ReferenceEncoding> Encodings(string tokenizer) => s_ids.Value[tokenizer];

    public static ReferenceChat Chat => s_chat.Value;

    public static string PathOf(string file) => Path.Combine(Folder(), file);

    private static T Read<T>(string file) => JsonSerializer.Deserialize<T>(File.ReadAllText(PathOf(file)), s_json)
        ?? throw new InvalidDataException($"{PathOf(file)} is empty.");

    /// <summary>Found from this source file when built here, else by walking up from the test binaries to the repository.</summary>
    private static string Folder([CallerFilePath] string sourceFile = "")
    {
        var relative = Path.Combine("tests", "reference", "tokenizers");
        var fromSource = Path.GetFullPath(Path.Combine(Path.GetDirectoryName(sourceFile) ?? "", "..", "..", "reference", "tokenizers"));
        if (Directory.Exists(fromSource))
        {
            return fromSource;
        }

        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (Directory.Exists(Path.Combine(directory.FullName, relative)))
            {
                return Path.Combine(directory.FullName, relative);
            }
        }

        throw new DirectoryNotFoundException($"Cannot find {relative} from '{sourceFile}' or '{AppContext.BaseDirectory}'.");
    }
}

internal sealed record ReferenceEncoding(
    string Text,
    int[] IdsNoSpecial,
    int[] IdsWithSpecial,
    string Decoded,
    string DecodedSkipSpecial);

internal sealed record ReferenceChat(
    Dictionary<string, string> Templates,
    [property: JsonPropertyName("qwen3")] ReferenceChatCase[] Qwen3,
    [property: JsonPropertyName("llama3")] ReferenceChatCase[] Llama3)
{
    public IReadOnlyList<ReferenceChatCase> Cases(string tokenizer) => tokenizer == "qwen3" ? Qwen3 : Llama3;
}

internal sealed record ReferenceChatCase(
    string Template,
    string Conversation,
    ReferenceMessage[] Messages,
    bool AddGenerationPrompt,
    bool EnableThinking,
    string Text,
    int[] Ids);

internal sealed record ReferenceMessage(string Role, string Content);
