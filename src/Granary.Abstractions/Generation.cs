namespace Granary.Abstractions;

/// <summary>A chat message; <paramref name="Role"/> is "system", "user" or "assistant".</summary>
[GenerateSerializer, Immutable, Alias("granary.ChatTurn")]
public sealed record ChatTurn([property: Id(0)] string Role, [property: Id(1)] string Content);

/// <summary>What the model continues: exactly one of text, token ids or a conversation.</summary>
[GenerateSerializer, Immutable, Alias("granary.Prompt")]
public sealed record Prompt
{
    /// <summary>Plain text; wrapped in the model's chat format (as one user turn) unless <see cref="UseChatTemplate"/> is false.</summary>
    [Id(0)]
    public string? Text { get; init; }

    /// <summary>Token ids used as they are.</summary>
    [Id(1)]
    public int[]? TokenIds { get; init; }

    /// <summary>A conversation rendered with the model's chat format, ending with the assistant's turn.</summary>
    [Id(2)]
    public ChatTurn[]? Messages { get; init; }

    /// <summary>System message put before a text prompt.</summary>
    [Id(3)]
    public string? System { get; init; }

    [Id(4)]
    public bool UseChatTemplate { get; init; } = true;

    public static Prompt FromText(string text, string? system = null, bool useChatTemplate = true) =>
        new() { Text = text, System = system, UseChatTemplate = useChatTemplate };

    public static Prompt FromTokenIds(IEnumerable<int> tokenIds) => new() { TokenIds = [.. tokenIds] };

    public static Prompt FromChat(IEnumerable<ChatTurn> messages) => new() { Messages = [.. messages] };

    public void Validate()
    {
        var given = (Text is null ? 0 : 1) + (TokenIds is null ? 0 : 1) + (Messages is null ? 0 : 1);
        if (given != 1)
        {
            throw new ArgumentException("A prompt needs exactly one of text, token ids or chat messages.");
        }
    }
}

/// <summary>
/// Sampling settings; a null value takes the model's generation_config.json default (greedy when that file does
/// not ask for sampling).
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.SamplingSettings")]
public sealed record SamplingSettings
{
    /// <summary>0 is greedy.</summary>
    [Id(0)]
    public float? Temperature { get; init; }

    [Id(1)]
    public float? TopP { get; init; }

    [Id(2)]
    public int? TopK { get; init; }

    [Id(3)]
    public float? MinP { get; init; }

    [Id(4)]
    public float? RepetitionPenalty { get; init; }

    [Id(5)]
    public int RepetitionContextSize { get; init; } = 64;

    [Id(6)]
    public int? Seed { get; init; }

    public static SamplingSettings Greedy { get; } = new() { Temperature = 0 };
}

/// <summary>One generation: the prompt, its length limit, sampling and stop conditions.</summary>
[GenerateSerializer, Immutable, Alias("granary.GenerationJob")]
public sealed record GenerationJob
{
    [Id(0)]
    public required Prompt Prompt { get; init; }

    [Id(1)]
    public int MaxTokens { get; init; } = 256;

    [Id(2)]
    public SamplingSettings Sampling { get; init; } = new();

    [Id(3)]
    public string[] StopStrings { get; init; } = [];

    /// <summary>When false, end-of-sequence ids do not end generation (reference comparisons).</summary>
    [Id(4)]
    public bool StopAtEndOfSequence { get; init; } = true;

    /// <summary>Names the job in cluster status; the coordinator assigns one when empty.</summary>
    [Id(5)]
    public string JobId { get; init; } = "";

    /// <summary>
    /// Tokens an earlier attempt of this job already streamed (a client resuming after its coordinator was lost):
    /// they are replayed into the KV cache and count towards <see cref="MaxTokens"/>, but are not streamed again.
    /// </summary>
    [Id(6)]
    public int[] ProducedTokenIds { get; init; } = [];

    /// <summary>Failovers the earlier attempts went through, carried into the summary.</summary>
    [Id(7)]
    public int PriorFailovers { get; init; }
}

/// <summary>
/// What the coordinator asks a shard to run: the prompt already as ids, plus the tokens produced before a
/// failover, which are replayed into the KV cache and not generated again.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.ShardGenerationRequest")]
public sealed record ShardGenerationRequest(
    [property: Id(0)] GenerationJob Job,
    [property: Id(1)] int[] PromptIds,
    [property: Id(2)] int[] ProducedIds);

public enum FinishReason
{
    /// <summary>End-of-sequence token or stop string.</summary>
    Stop,

    /// <summary>max_tokens reached or the context is full.</summary>
    Length,
}

/// <summary>Counts and speeds of a finished generation.</summary>
[GenerateSerializer, Immutable, Alias("granary.GenerationSummary")]
public sealed record GenerationSummary(
    [property: Id(0)] int PromptTokens,
    [property: Id(1)] int GeneratedTokens,
    [property: Id(2)] double PromptTokensPerSecond,
    [property: Id(3)] double GenerationTokensPerSecond,
    [property: Id(4)] FinishReason FinishReason,
    [property: Id(5)] int Failovers);

/// <summary>
/// One streamed piece of output: a token and the text it completed (empty while a character or a possible stop
/// string is pending). A chunk without a token carries held-back text; the last chunk carries the summary.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.TokenChunk")]
public sealed record TokenChunk(
    [property: Id(0)] int TokenId,
    [property: Id(1)] string Text,
    [property: Id(2)] GenerationSummary? Summary = null)
{
    public const int NoToken = -1;

    public bool HasToken => TokenId != NoToken;
}
