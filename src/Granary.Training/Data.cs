using System.Text.Json;
using Granary.Models.Tokenization;

namespace Granary.Training;

/// <summary>One tokenized record: the tokens to learn from, of which the first <see cref="PromptLength"/> are prompt.</summary>
public sealed record TrainingExample(int[] Tokens, int PromptLength);

/// <summary>
/// Reads mlx_lm-style JSONL data: one object per line, {"text"}, {"prompt","completion"} or {"messages":[{"role",
/// "content"}...]}; chat formats go through the tokenizer's chat template. Errors name the file and line.
/// </summary>
public static class JsonlDataset
{
    public static IReadOnlyList<TrainingExample> Load(string path, ITextTokenizer tokenizer)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        var examples = new List<TrainingExample>();
        var lineNumber = 0;
        foreach (var line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line))
            {
                continue;
            }

            try
            {
                using var document = JsonDocument.Parse(line);
                examples.Add(Tokenize(document.RootElement, tokenizer));
            }
            catch (Exception e) when (e is JsonException or InvalidDataException or InvalidOperationException or KeyNotFoundException)
            {
                throw new InvalidDataException($"{path}:{lineNumber}: {e.Message}", e);
            }
        }

        if (examples.Count == 0)
        {
            throw new InvalidDataException($"{path}: no records.");
        }

        return examples;
    }

    /// <summary>train.jsonl, valid.jsonl or test.jsonl of a data folder; null when the file is absent.</summary>
    public static IReadOnlyList<TrainingExample>? LoadSplit(string directory, string split, ITextTokenizer tokenizer)
    {
        var path = Path.Combine(directory, split + ".jsonl");
        return File.Exists(path) ? Load(path, tokenizer) : null;
    }

    private static TrainingExample Tokenize(JsonElement record, ITextTokenizer tokenizer)
    {
        if (record.ValueKind != JsonValueKind.Object)
        {
            throw new InvalidDataException($"expected a JSON object, got {record.ValueKind}.");
        }

        if (record.TryGetProperty("messages", out var messages))
        {
            var conversation = ReadMessages(messages);
            var full = Encode(tokenizer, tokenizer.ApplyChatTemplate(conversation, addGenerationPrompt: false));
            var prompt = Encode(tokenizer, tokenizer.ApplyChatTemplate(conversation.Take(conversation.Count - 1).ToArray(), addGenerationPrompt: true));
            return new TrainingExample(full, Math.Min(prompt.Length, full.Length));
        }

        if (record.TryGetProperty("prompt", out _) || record.TryGetProperty("completion", out _))
        {
            var promptText = RequireString(record, "prompt");
            var completion = RequireString(record, "completion");
            if (tokenizer.HasChatTemplate)
            {
                ChatMessage[] conversation = [new("user", promptText), new("assistant", completion)];
                var full = Encode(tokenizer, tokenizer.ApplyChatTemplate(conversation, addGenerationPrompt: false));
                var prompt = Encode(tokenizer, tokenizer.ApplyChatTemplate(conversation[..1], addGenerationPrompt: true));
                return new TrainingExample(full, Math.Min(prompt.Length, full.Length));
            }

            var promptTokens = tokenizer.Encode(promptText, addSpecialTokens: true);
            var tokens = promptTokens.Concat(tokenizer.Encode(completion)).ToList();
            return new TrainingExample(WithEndOfSequence(tokens, tokenizer), promptTokens.Count);
        }

        if (record.TryGetProperty("text", out _))
        {
            var tokens = tokenizer.Encode(RequireString(record, "text"), addSpecialTokens: true).ToList();
            return new TrainingExample(WithEndOfSequence(tokens, tokenizer), 0);
        }

        throw new InvalidDataException("a record needs \"text\", \"prompt\" and \"completion\", or \"messages\".");
    }

    private static int[] Encode(ITextTokenizer tokenizer, string rendered) => [.. tokenizer.Encode(rendered)];

    private static int[] WithEndOfSequence(List<int> tokens, ITextTokenizer tokenizer)
    {
        if (tokenizer.EndOfSequenceIds.Count > 0 && (tokens.Count == 0 || !tokenizer.EndOfSequenceIds.Contains(tokens[^1])))
        {
            tokens.Add(tokenizer.EndOfSequenceIds.Min());
        }

        return [.. tokens];
    }

    private static string RequireString(JsonElement record, string name) =>
        record.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String
            ? value.GetString()!
            : throw new InvalidDataException($"\"{name}\" must be a string.");

    private static List<ChatMessage> ReadMessages(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
        {
            throw new InvalidDataException("\"messages\" must be a non-empty array.");
        }

        var conversation = new List<ChatMessage>();
        foreach (var message in messages.EnumerateArray())
        {
            var role = RequireString(message, "role");
            if (role is not ("system" or "user" or "assistant"))
            {
                throw new InvalidDataException($"message {conversation.Count}: role \"{role}\" is not system, user or assistant.");
            }

            conversation.Add(new ChatMessage(role, RequireString(message, "content")));
        }

        return conversation;
    }
}

/// <summary>
/// Groups examples of similar length (sorted by length, as mlx_lm) into right-padded batches; batch order is shuffled
/// per epoch from a seed. Labels mask padding, and the prompt when asked.
/// </summary>
public sealed class Batcher
{
    private readonly IReadOnlyList<TrainingExample> _examples;
    private readonly int[][] _groups;

    public Batcher(IReadOnlyList<TrainingExample> examples, int batchSize, int maxSequenceLength, bool maskPrompt, int padId = 0)
    {
        ArgumentNullException.ThrowIfNull(examples);
        if (batchSize <= 0 || maxSequenceLength < 2)
        {
            throw new ArgumentOutOfRangeException(nameof(batchSize), "Batch size must be positive and the sequence length at least 2.");
        }

        if (examples.Count < batchSize)
        {
            throw new ArgumentException($"{examples.Count} examples cannot fill one batch of {batchSize}.", nameof(examples));
        }

        _examples = examples;
        BatchSize = batchSize;
        MaxSequenceLength = maxSequenceLength;
        MaskPrompt = maskPrompt;
        PadId = padId;
        var order = Enumerable.Range(0, examples.Count).OrderBy(i => examples[i].Tokens.Length).ThenBy(i => i).ToArray();
        _groups = order.Chunk(batchSize).Where(g => g.Length == batchSize).ToArray();
    }

    public int BatchSize { get; }

    public int MaxSequenceLength { get; }

    public bool MaskPrompt { get; }

    public int PadId { get; }

    /// <summary>Batches forever (training) or once in order (evaluation).</summary>
    public IEnumerable<TokenBatch> Batches(bool repeat, int seed = 0)
    {
        var random = new Random(seed);
        do
        {
            var order = Enumerable.Range(0, _groups.Length).ToArray();
            if (repeat)
            {
                random.Shuffle(order);
            }

            foreach (var g in order)
            {
                yield return Build(_groups[g]);
            }
        }
        while (repeat);
    }

    private TokenBatch Build(int[] members)
    {
        var length = Math.Min(MaxSequenceLength, members.Max(m => _examples[m].Tokens.Length));
        var ids = new int[members.Length * length];
        var labels = new int[ids.Length];
        Array.Fill(ids, PadId);
        Array.Fill(labels, TokenBatch.Ignored);
        for (var b = 0; b < members.Length; b++)
        {
            var example = _examples[members[b]];
            var n = Math.Min(length, example.Tokens.Length);
            var from = MaskPrompt ? Math.Min(example.PromptLength, n) : 0;
            example.Tokens.AsSpan(0, n).CopyTo(ids.AsSpan(b * length));
            example.Tokens.AsSpan(from, n - from).CopyTo(labels.AsSpan((b * length) + from));
        }

        return new TokenBatch(members.Length, length, ids, labels);
    }
}
