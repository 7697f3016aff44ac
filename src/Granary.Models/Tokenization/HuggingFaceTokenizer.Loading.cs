using System.Text;
using System.Text.Json;

namespace Granary.Models.Tokenization;

public sealed partial class HuggingFaceTokenizer
{
    private HuggingFaceTokenizer(
        BytePairEncoder bytePairEncoder,
        PieceSplitter pieceSplitter,
        bool normalizeNfc,
        IReadOnlyList<AddedToken> addedTokens,
        Dictionary<string, int> vocabulary,
        int[] prefixIds,
        int[] suffixIds,
        ChatFormat? chatFormat,
        string chatFormatUnavailableReason,
        IEnumerable<int> endOfSequenceIds)
    {
        _bytePairEncoder = bytePairEncoder;
        _pieceSplitter = pieceSplitter;
        _normalizeNfc = normalizeNfc;
        _addedTokens = new AddedTokenMatcher(addedTokens);
        _prefixIds = prefixIds;
        _suffixIds = suffixIds;
        _chatFormat = chatFormat;
        _chatFormatUnavailableReason = chatFormatUnavailableReason;
        EndOfSequenceIds = endOfSequenceIds.ToHashSet();

        var size = Math.Max(vocabulary.Count == 0 ? 0 : vocabulary.Values.Max() + 1, addedTokens.Count == 0 ? 0 : addedTokens.Max(token => token.Id) + 1);
        var tokens = new string?[size];
        foreach (var (token, id) in vocabulary)
        {
            tokens[id] = token;
        }

        _isSpecial = new bool[size];
        foreach (var token in addedTokens)
        {
            tokens[token.Id] = token.Content;
            _isSpecial[token.Id] = token.Special;
        }

        // All token bytes in one array: a few MB instead of one small array per token.
        var bytes = new List<byte>(size * 6);
        _tokenByteOffsets = new int[size + 1];
        for (var id = 0; id < size; id++)
        {
            if (tokens[id] is { } token)
            {
                bytes.AddRange(ByteLevelAlphabet.TokenBytes(token));
            }

            _tokenByteOffsets[id + 1] = bytes.Count;
        }

        _tokenBytes = [.. bytes];
    }

    /// <summary>
    /// Loads the tokenizer of a Hugging Face model folder: tokenizer.json, and when present tokenizer_config.json
    /// (chat template, BOS/EOS tokens), chat_template.jinja, generation_config.json and config.json (EOS ids).
    /// </summary>
    /// <exception cref="FileNotFoundException">The folder has no tokenizer.json.</exception>
    /// <exception cref="ModelLoadException">A file is malformed or describes a tokenizer this runtime does not support.</exception>
    public static HuggingFaceTokenizer Load(string modelDirectory) => Load(modelDirectory, TimeProvider.System);

    /// <inheritdoc cref="Load(string)"/>
    /// <param name="modelDirectory">The model folder.</param>
    /// <param name="clock">Gives today's date to chat templates that write it into the prompt from the clock (Llama-3.2's).</param>
    internal static HuggingFaceTokenizer Load(string modelDirectory, TimeProvider clock)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        ArgumentNullException.ThrowIfNull(clock);
        var tokenizerPath = Path.Combine(modelDirectory, "tokenizer.json");
        if (!File.Exists(tokenizerPath))
        {
            throw new FileNotFoundException($"No tokenizer.json in '{modelDirectory}'.", tokenizerPath);
        }

        using var tokenizerJson = ParseJson(tokenizerPath);
        var root = tokenizerJson.RootElement;
        var model = RequireObject(root, "model", tokenizerPath);
        var vocabulary = ReadVocabulary(model, tokenizerPath);
        var bytePairEncoder = new BytePairEncoder(vocabulary, ReadMerges(model, tokenizerPath), ReadBoolean(model, "ignore_merges", tokenizerPath), tokenizerPath);
        var addedTokens = ReadAddedTokens(root, tokenizerPath);
        var normalizeNfc = ReadNormalizer(root, tokenizerPath);
        var pieceSplitter = ReadPreTokenizer(root, tokenizerPath);
        ValidateDecoder(root, tokenizerPath);
        var (prefixIds, suffixIds) = ReadPostProcessor(root, tokenizerPath);

        var addedTokenIds = addedTokens.ToDictionary(token => token.Content, token => token.Id, StringComparer.Ordinal);
        bool TryGetTokenId(string token, out int id) => addedTokenIds.TryGetValue(token, out id) || vocabulary.TryGetValue(token, out id);

        var endOfSequenceIds = new HashSet<int>();
        string? beginningOfText = null;
        string? template = null;
        var configPath = Path.Combine(modelDirectory, "tokenizer_config.json");
        var templateSource = configPath;
        if (File.Exists(configPath))
        {
            using var configJson = ParseJson(configPath);
            var config = configJson.RootElement;
            beginningOfText = ReadTokenText(config, "bos_token", configPath);
            if (ReadTokenText(config, "eos_token", configPath) is { } endOfText && TryGetTokenId(endOfText, out var endOfTextId))
            {
                endOfSequenceIds.Add(endOfTextId);
            }

            if (ReadBoolean(config, "add_bos_token", configPath) && prefixIds.Length == 0 && beginningOfText is not null)
            {
                prefixIds = TryGetTokenId(beginningOfText, out var beginningOfTextId)
                    ? [beginningOfTextId]
                    : throw new ModelLoadException(configPath, "bos_token", $"token '{beginningOfText}' is not in tokenizer.json.");
            }

            template = ReadChatTemplate(config, configPath);
        }

        // Newer checkpoints keep the template in its own file, which takes precedence as in transformers.
        var templatePath = Path.Combine(modelDirectory, "chat_template.jinja");
        if (File.Exists(templatePath))
        {
            template = File.ReadAllText(templatePath);
            templateSource = templatePath;
        }

        ChatFormat? chatFormat = null;
        var chatFormatUnavailableReason = $"No chat template: '{configPath}' is missing or has no chat_template.";
        if (template is not null)
        {
            chatFormat = ChatFormat.Detect(template, beginningOfText, clock, out var reason);
            chatFormatUnavailableReason = $"The chat template in '{templateSource}' is not supported: {reason}.";
        }

        if (chatFormat is not null && TryGetTokenId(chatFormat.EndOfTurnToken, out var endOfTurnId))
        {
            endOfSequenceIds.Add(endOfTurnId);
        }

        foreach (var file in new[] { "generation_config.json", "config.json" })
        {
            var path = Path.Combine(modelDirectory, file);
            if (File.Exists(path))
            {
                using var json = ParseJson(path);
                endOfSequenceIds.UnionWith(ReadIds(json.RootElement, "eos_token_id", path));
            }
        }

        return new HuggingFaceTokenizer(bytePairEncoder, pieceSplitter, normalizeNfc, addedTokens, vocabulary, prefixIds, suffixIds,
            chatFormat, chatFormatUnavailableReason, endOfSequenceIds);
    }

    private static JsonDocument ParseJson(string path)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException error)
        {
            throw new ModelLoadException(path, null, $"is not valid JSON ({error.Message})", error);
        }
    }

    private static Dictionary<string, int> ReadVocabulary(JsonElement model, string path)
    {
        var type = ReadString(model, "type", path);
        if (type is not null and not "BPE")
        {
            throw new ModelLoadException(path, "model.type", $"model type '{type}' is not supported; only byte-level BPE is.");
        }

        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
        {
            if (ReadString(model, affix, path) is { Length: > 0 } value)
            {
                throw new ModelLoadException(path, $"model.{affix}", $"'{value}' is not supported; byte-level BPE uses none.");
            }
        }

        var vocab = RequireObject(model, "vocab", path);
        var vocabulary = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var entry in vocab.EnumerateObject())
        {
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetInt32(out var id) || id < 0)
            {
                throw new ModelLoadException(path, $"model.vocab.{entry.Name}", "must be a non-negative integer id.");
            }

            vocabulary[entry.Name] = id;
        }

        return vocabulary;
    }

    /// <summary>Merges come as "left right" strings (older files) or as ["left", "right"] pairs.</summary>
    private static List<(string Left, string Right)> ReadMerges(JsonElement model, string path)
    {
        if (!model.TryGetProperty("merges", out var merges) || merges.ValueKind != JsonValueKind.Array)
        {
            throw new ModelLoadException(path, "model.merges", "is missing or not an array.");
        }

        var result = new List<(string, string)>(merges.GetArrayLength());
        foreach (var merge in merges.EnumerateArray())
        {
            if (merge.ValueKind == JsonValueKind.String && merge.GetString()!.Split(' ') is [var left, var right])
            {
                result.Add((left, right));
            }
            else if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
                && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
            {
                result.Add((merge[0].GetString()!, merge[1].GetString()!));
            }
            else
            {
                throw new ModelLoadException(path, $"model.merges[{result.Count}]", $"must be \"left right\" or [\"left\", \"right\"], not {merge.GetRawText()}.");
            }
        }

        return result;
    }

    private static List<AddedToken> ReadAddedTokens(JsonElement root, string path)
    {
        var result = new List<AddedToken>();
        if (!root.TryGetProperty("added_tokens", out var tokens) || tokens.ValueKind == JsonValueKind.Null)
        {
            return result;
        }

        foreach (var token in tokens.EnumerateArray())
        {
            var field = $"added_tokens[{result.Count}]";
            if (!token.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out var id) || id < 0
                || ReadString(token, "content", path) is not { Length: > 0 } content)
            {
                throw new ModelLoadException(path, field, "needs a non-negative integer 'id' and a non-empty 'content'.");
            }

            // single_word needs word-boundary checks that neither Qwen nor Llama-3 uses; refuse rather than mis-split.
            if (ReadBoolean(token, "single_word", path))
            {
                throw new ModelLoadException(path, field, $"single_word added tokens ('{content}') are not supported.");
            }

            result.Add(new AddedToken(id, content, ReadBoolean(token, "special", path), ReadBoolean(token, "lstrip", path), ReadBoolean(token, "rstrip", path)));
        }

        return result;
    }

    /// <summary>Returns whether text is NFC-normalized before BPE (Qwen); no normalizer is the other supported case.</summary>
    private static bool ReadNormalizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("normalizer", out var normalizer) || normalizer.ValueKind == JsonValueKind.Null)
        {
            return false;
        }

        var steps = ReadString(normalizer, "type", path) == "Sequence" && normalizer.TryGetProperty("normalizers", out var inner)
            ? inner.EnumerateArray().ToList()
            : [normalizer];
        var nfc = false;
        foreach (var step in steps)
        {
            var type = ReadString(step, "type", path);
            if (type != "NFC")
            {
                throw new ModelLoadException(path, "normalizer", $"normalizer '{type}' is not supported; only NFC is.");
            }

            nfc = true;
        }

        return nfc;
    }

    /// <summary>Only the byte-level pre-tokenizer after a Qwen2/Qwen3 or Llama-3 Split regex is supported.</summary>
    private static PieceSplitter ReadPreTokenizer(JsonElement root, string path)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var preTokenizer) || preTokenizer.ValueKind != JsonValueKind.Object)
        {
            throw new ModelLoadException(path, "pre_tokenizer", "is missing; a Split + ByteLevel pre-tokenizer is required.");
        }

        if (ReadString(preTokenizer, "type", path) == "Sequence" && preTokenizer.TryGetProperty("pretokenizers", out var steps)
            && steps.ValueKind == JsonValueKind.Array && steps.GetArrayLength() == 2
            && ReadString(steps[0], "type", path) == "Split" && ReadString(steps[1], "type", path) == "ByteLevel")
        {
            var split = steps[0];
            var byteLevel = steps[1];
            var pattern = split.TryGetProperty("pattern", out var patternElement) ? ReadString(patternElement, "Regex", path) : null;
            if (ReadString(split, "behavior", path) != "Isolated" || ReadBoolean(split, "invert", path))
            {
                throw new ModelLoadException(path, "pre_tokenizer.pretokenizers[0]", "only the Isolated, non-inverted Split behavior is supported.");
            }

            if (ReadBoolean(byteLevel, "add_prefix_space", path) || ReadBoolean(byteLevel, "use_regex", path))
            {
                throw new ModelLoadException(path, "pre_tokenizer.pretokenizers[1]", "only a ByteLevel step without add_prefix_space and use_regex is supported after Split.");
            }

            return PieceSplitter.ForPattern(pattern ?? "")
                ?? throw new ModelLoadException(path, "pre_tokenizer.pretokenizers[0].pattern.Regex", $"split pattern '{pattern}' is not supported; the Qwen2/Qwen3 and Llama-3 patterns are.");
        }

        throw new ModelLoadException(path, "pre_tokenizer", $"pre-tokenizer {preTokenizer.GetRawText()} is not supported; Sequence[Split, ByteLevel] is required.");
    }

    private static void ValidateDecoder(JsonElement root, string path)
    {
        if (root.TryGetProperty("decoder", out var decoder) && decoder.ValueKind != JsonValueKind.Null
            && ReadString(decoder, "type", path) is var type and not "ByteLevel")
        {
            throw new ModelLoadException(path, "decoder", $"decoder '{type}' is not supported; only ByteLevel is.");
        }
    }

    /// <summary>The ids that addSpecialTokens puts around a single sequence, from TemplateProcessing.</summary>
    private static (int[] Prefix, int[] Suffix) ReadPostProcessor(JsonElement root, string path)
    {
        if (!root.TryGetProperty("post_processor", out var processor) || processor.ValueKind == JsonValueKind.Null)
        {
            return ([], []);
        }

        var steps = ReadString(processor, "type", path) == "Sequence" && processor.TryGetProperty("processors", out var inner)
            ? inner.EnumerateArray().ToList()
            : [processor];
        List<int> prefix = [], suffix = [];
        foreach (var step in steps)
        {
            switch (ReadString(step, "type", path))
            {
                case "ByteLevel":
                    // Only adjusts offsets, which this tokenizer does not report.
                    break;
                case "TemplateProcessing":
                    var sequenceSeen = false;
                    foreach (var piece in RequireArray(step, "single", path))
                    {
                        if (piece.TryGetProperty("Sequence", out _))
                        {
                            sequenceSeen = true;
                        }
                        else if (piece.TryGetProperty("SpecialToken", out var special)
                            && ReadString(special, "id", path) is { } name
                            && step.TryGetProperty("special_tokens", out var specialTokens)
                            && specialTokens.TryGetProperty(name, out var definition))
                        {
                            (sequenceSeen ? suffix : prefix).AddRange(RequireArray(definition, "ids", path).Select(id => id.GetInt32()));
                        }
                        else
                        {
                            throw new ModelLoadException(path, "post_processor.single", $"template piece {piece.GetRawText()} is not a Sequence or a defined SpecialToken.");
                        }
                    }

                    break;
                case var type:
                    throw new ModelLoadException(path, "post_processor", $"post-processor '{type}' is not supported; ByteLevel and TemplateProcessing are.");
            }
        }

        return ([.. prefix], [.. suffix]);
    }

    /// <summary>chat_template is one string, or a list of named templates of which "default" is the one for plain chat.</summary>
    private static string? ReadChatTemplate(JsonElement config, string path)
    {
        if (!config.TryGetProperty("chat_template", out var template) || template.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        if (template.ValueKind == JsonValueKind.String)
        {
            return template.GetString();
        }

        if (template.ValueKind == JsonValueKind.Array)
        {
            foreach (var named in template.EnumerateArray())
            {
                if (ReadString(named, "name", path) == "default")
                {
                    return ReadString(named, "template", path);
                }
            }
        }

        throw new ModelLoadException(path, "chat_template", "must be a string or a list of {name, template} with a \"default\" entry.");
    }

    /// <summary>bos_token/eos_token are a string or an object with a "content" string.</summary>
    private static string? ReadTokenText(JsonElement config, string name, string path) =>
        config.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Object
            ? ReadString(value, "content", path)
            : ReadString(config, name, path);

    private static IEnumerable<int> ReadIds(JsonElement root, string name, string path)
    {
        if (!root.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return [];
        }

        var ids = value.ValueKind == JsonValueKind.Array ? value.EnumerateArray().ToList() : [value];
        return ids.Select(id => id.ValueKind == JsonValueKind.Number && id.TryGetInt32(out var number)
            ? number
            : throw new ModelLoadException(path, name, $"must be an integer id or a list of them, not {value.GetRawText()}."));
    }

    private static JsonElement RequireObject(JsonElement parent, string name, string path) =>
        parent.ValueKind == JsonValueKind.Object && parent.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Object
            ? value
            : throw new ModelLoadException(path, name, "is missing or not an object.");

    private static JsonElement.ArrayEnumerator RequireArray(JsonElement parent, string name, string path) =>
        parent.ValueKind == JsonValueKind.Object && parent.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Array
            ? value.EnumerateArray()
            : throw new ModelLoadException(path, name, "is missing or not an array.");

    private static string? ReadString(JsonElement parent, string name, string path)
    {
        if (parent.ValueKind != JsonValueKind.Object || !parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return null;
        }

        return value.ValueKind == JsonValueKind.String ? value.GetString() : throw new ModelLoadException(path, name, $"must be a string, not {value.GetRawText()}.");
    }

    private static bool ReadBoolean(JsonElement parent, string name, string path)
    {
        if (parent.ValueKind != JsonValueKind.Object || !parent.TryGetProperty(name, out var value) || value.ValueKind == JsonValueKind.Null)
        {
            return false;
        }

        return value.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw new ModelLoadException(path, name, $"must be true or false, not {value.GetRawText()}."),
        };
    }
}
