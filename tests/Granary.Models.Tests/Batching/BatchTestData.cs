using Granary.Models.Generation;
using Granary.Models.Tests.Reference;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Batching;

/// <summary>Prompts of different lengths drawn from a reference model's prompt, and a one-at-a-time baseline to compare with.</summary>
internal static class BatchTestData
{
    /// <summary>The reference prompt, a short prefix of it, a long one (over two prefill chunks of 16) and a reversed one.</summary>
    public static int[][] Prompts(ReferenceModel reference)
    {
        var prompt = reference.PromptIds;
        var vocabulary = reference.Logits[0].Length;
        var longPrompt = Enumerable.Range(0, 37).Select(i => (prompt[i % prompt.Length] + (i * 7)) % vocabulary).ToArray();
        return [prompt, prompt[..5], longPrompt, [.. prompt.Reverse()]];
    }

    public static GenerationRequest Greedy(int[] prompt, int maxTokens) => new()
    {
        PromptIds = prompt,
        MaxTokens = maxTokens,
        Sampling = SamplingOptions.Greedy,
        StopAtEndOfSequence = false,
    };

    /// <summary>Temperature sampling with its own seed: the draws must not depend on the other sequences of a batch.</summary>
    public static GenerationRequest Sampled(int[] prompt, int maxTokens, int seed) => new()
    {
        PromptIds = prompt,
        MaxTokens = maxTokens,
        Sampling = new SamplingOptions { Temperature = 0.9f, TopK = 20, TopP = 0.95f, RepetitionPenalty = 1.1f, Seed = seed },
        StopAtEndOfSequence = false,
    };

    /// <summary>Every token of a batching engine's stream, once it ends.</summary>
    public static async Task<GeneratedToken[]> Collect(IAsyncEnumerable<GeneratedToken> stream)
    {
        var tokens = new List<GeneratedToken>();
        await foreach (var token in stream)
        {
            tokens.Add(token);
        }

        return [.. tokens];
    }

    /// <summary>What <see cref="TextGenerator"/> streams for each request run alone.</summary>
    public static GeneratedToken[][] OneAtATime(CausalLanguageModel model, ITextTokenizer? tokenizer, IReadOnlyList<GenerationRequest> requests) =>
        [.. requests.Select(r => new TextGenerator(model, tokenizer, new HashSet<int>()).Generate(r).ToArray())];
}

/// <summary>
/// A stand-in tokenizer for models without one: id i reads "w{i} ", so stop strings and streamed text can be checked
/// against <see cref="TextGenerator"/>.
/// </summary>
internal sealed class WordTokenizer(int vocabularySize) : ITextTokenizer
{
    public int VocabularySize => vocabularySize;

    public IReadOnlySet<int> EndOfSequenceIds { get; } = new HashSet<int>();

    public bool HasChatTemplate => false;

    public static string Word(int id) => $"w{id} ";

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = false) =>
        [.. text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(w => int.Parse(w[1..], System.Globalization.CultureInfo.InvariantCulture))];

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var text = new System.Text.StringBuilder();
        foreach (var id in ids)
        {
            text.Append(Word(id));
        }

        return text.ToString();
    }

    public IStreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => new Decoder();

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, bool enableThinking = false) =>
        throw new NotSupportedException("The word tokenizer has no chat format.");

    private sealed class Decoder : IStreamingDecoder
    {
        public string Push(int id) => Word(id);

        public string Flush() => string.Empty;
    }
}
