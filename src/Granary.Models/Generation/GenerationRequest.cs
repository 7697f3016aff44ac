namespace Granary.Models.Generation;

/// <summary>What to generate: a prompt as token ids, how many tokens at most, how to sample and when to stop.</summary>
public sealed record GenerationRequest
{
    public required IReadOnlyList<int> PromptIds { get; init; }

    public int MaxTokens { get; init; } = 256;

    public SamplingOptions Sampling { get; init; } = new();

    /// <summary>Generation ends when the text contains one of these; the stop string itself is not returned.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];

    /// <summary>Ids that end generation in addition to the tokenizer's end-of-sequence ids; they are not returned.</summary>
    public IReadOnlyCollection<int> StopTokenIds { get; init; } = [];

    /// <summary>When false, end-of-sequence ids do not stop generation (for reference comparisons).</summary>
    public bool StopAtEndOfSequence { get; init; } = true;

    public void Validate(int vocabularySize)
    {
        if (PromptIds.Count == 0)
        {
            throw new ArgumentException("The prompt is empty: at least one token is needed.");
        }

        foreach (var id in PromptIds)
        {
            if ((uint)id >= (uint)vocabularySize)
            {
                throw new ArgumentException($"Prompt token id {id} is outside the vocabulary [0, {vocabularySize}).");
            }
        }

        if (MaxTokens < 0)
        {
            throw new ArgumentException($"max_tokens must be >= 0, got {MaxTokens}.");
        }

        foreach (var stop in StopStrings)
        {
            if (string.IsNullOrEmpty(stop))
            {
                throw new ArgumentException("Stop strings must not be empty.");
            }
        }

        Sampling.Validate();
    }
}

/// <summary>
/// One generated token and the text it completed (empty while a character or a possible stop string is pending).
/// When generation ends on an end-of-sequence id with text still held back, a last item with no token
/// (<see cref="HasToken"/> false) carries that text.
/// </summary>
public readonly record struct GeneratedToken(int Id, string Text)
{
    public const int NoToken = -1;

    public bool HasToken => Id != NoToken;
}

/// <summary>What <see cref="TextGenerator.GenerateBatch"/> produced for one request: the items a stream would have given, and its counts.</summary>
public sealed record GeneratedSequence(IReadOnlyList<GeneratedToken> Tokens, GenerationStatistics Statistics)
{
    /// <summary>The ids generated, in order.</summary>
    public IEnumerable<int> TokenIds => Tokens.Where(t => t.HasToken).Select(t => t.Id);

    /// <summary>The whole text.</summary>
    public string Text => string.Concat(Tokens.Select(t => t.Text));
}

/// <summary>Why generation ended.</summary>
public enum FinishReason
{
    /// <summary>End-of-sequence token or stop string.</summary>
    Stop,

    /// <summary>max_tokens reached (or the model's context is full).</summary>
    Length,

    Cancelled,
}

/// <summary>Counts and timings of one generation, filled in as it runs.</summary>
public sealed class GenerationStatistics
{
    public int PromptTokens { get; internal set; }

    public int GeneratedTokens { get; internal set; }

    public TimeSpan PrefillTime { get; internal set; }

    public TimeSpan DecodeTime { get; internal set; }

    public FinishReason FinishReason { get; internal set; }

    public double PromptTokensPerSecond => PrefillTime > TimeSpan.Zero ? PromptTokens / PrefillTime.TotalSeconds : 0;

    /// <summary>Tokens per second after the first (the first comes out of prefill).</summary>
    public double GenerationTokensPerSecond =>
        GeneratedTokens > 1 && DecodeTime > TimeSpan.Zero ? (GeneratedTokens - 1) / DecodeTime.TotalSeconds : 0;
}
