using System.Text.Json.Serialization;

namespace Granary.Gateway.Protocol;

// The response bodies of the OpenAI API that Granary writes. Nulls are written (clients expect e.g.
// "finish_reason": null in stream chunks) except where a field is marked to be left out.

internal sealed record Usage(int PromptTokens, int CompletionTokens, int TotalTokens)
{
    public static Usage Of(int promptTokens, int completionTokens) => new(promptTokens, completionTokens, promptTokens + completionTokens);
}

internal sealed record ChatMessageOut(string Role, string Content);

internal sealed record ChatChoice(
    int Index,
    ChatMessageOut Message,
    object? Logprobs,
    string FinishReason,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int[]? TokenIds);

internal sealed record ChatCompletion(
    string Id,
    string Object,
    long Created,
    string Model,
    ChatChoice[] Choices,
    Usage Usage);

internal sealed record ChatDelta(
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Role,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Content);

internal sealed record ChatChunkChoice(
    int Index,
    ChatDelta Delta,
    object? Logprobs,
    string? FinishReason,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int[]? TokenIds);

internal sealed record ChatCompletionChunk(
    string Id,
    string Object,
    long Created,
    string Model,
    ChatChunkChoice[] Choices,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage);

internal sealed record CompletionChoice(
    int Index,
    string Text,
    object? Logprobs,
    string? FinishReason,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int[]? TokenIds);

/// <summary>A whole completion, and (with object "text_completion" too) each streamed chunk of one.</summary>
internal sealed record Completion(
    string Id,
    string Object,
    long Created,
    string Model,
    CompletionChoice[] Choices,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] Usage? Usage);

internal sealed record ModelCard(string Id, string Object, long Created, string OwnedBy);

internal sealed record ModelList(string Object, ModelCard[] Data);

internal sealed record ErrorBody(string Message, string Type, string? Param, string? Code);

internal sealed record ErrorResponse(ErrorBody Error);

internal sealed record HealthReport(string Status, int ActiveSilos, int Silos, string? Error);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(ChatCompletionRequest))]
[JsonSerializable(typeof(CompletionRequest))]
[JsonSerializable(typeof(ChatCompletion))]
[JsonSerializable(typeof(ChatCompletionChunk))]
[JsonSerializable(typeof(Completion))]
[JsonSerializable(typeof(ModelList))]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(HealthReport))]
internal sealed partial class GatewayJsonContext : JsonSerializerContext;
