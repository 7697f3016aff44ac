using System.Text.Json;

namespace Granary.Gateway.Protocol;

// The request bodies of the OpenAI API as far as Granary reads them. Fields whose JSON type varies (stop, prompt,
// message content) are kept as JsonElement and checked by RequestReader, so errors can name the offending parameter.
// Extensions shared with vLLM: top_k, min_p, repetition_penalty, ignore_eos, return_token_ids.

/// <summary>The fields chat and text completion requests share: model, length, sampling, stops and streaming.</summary>
internal abstract class GenerationRequestBody
{
    public string? Model { get; set; }

    public int? MaxTokens { get; set; }

    public float? Temperature { get; set; }

    public float? TopP { get; set; }

    public int? TopK { get; set; }

    public float? MinP { get; set; }

    public float? RepetitionPenalty { get; set; }

    public float? PresencePenalty { get; set; }

    public float? FrequencyPenalty { get; set; }

    public JsonElement Stop { get; set; }

    public long? Seed { get; set; }

    public int? N { get; set; }

    public bool? Stream { get; set; }

    public StreamOptionsBody? StreamOptions { get; set; }

    public bool? IgnoreEos { get; set; }

    public bool? ReturnTokenIds { get; set; }
}

internal sealed class ChatCompletionRequest : GenerationRequestBody
{
    public List<ChatMessageBody?>? Messages { get; set; }

    public int? MaxCompletionTokens { get; set; }

    public bool? Logprobs { get; set; }

    public int? TopLogprobs { get; set; }

    public JsonElement Tools { get; set; }

    public JsonElement ResponseFormat { get; set; }
}

internal sealed class ChatMessageBody
{
    public string? Role { get; set; }

    /// <summary>A string, or an array of content parts of which only {"type":"text"} is supported.</summary>
    public JsonElement Content { get; set; }
}

internal sealed class CompletionRequest : GenerationRequestBody
{
    /// <summary>A string, an array of one string, an array of token ids, or an array of one array of token ids.</summary>
    public JsonElement Prompt { get; set; }

    public int? BestOf { get; set; }

    public bool? Echo { get; set; }

    public string? Suffix { get; set; }

    public int? Logprobs { get; set; }
}

internal sealed class StreamOptionsBody
{
    public bool? IncludeUsage { get; set; }
}
