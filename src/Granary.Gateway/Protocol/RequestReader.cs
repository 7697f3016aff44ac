using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Granary.Abstractions;
using Microsoft.AspNetCore.Http;

namespace Granary.Gateway.Protocol;

/// <summary>What one generation request asks for, checked and in the cluster's terms.</summary>
internal sealed record GenerationSpec(
    string ServedModel,
    string ModelReference,
    Prompt Prompt,
    string PromptParam,
    int MaxTokens,
    SamplingSettings Sampling,
    string[] StopStrings,
    bool StopAtEndOfSequence,
    bool Stream,
    bool IncludeUsage,
    bool ReturnTokenIds);

/// <summary>Reads request bodies and turns them into <see cref="GenerationSpec"/>s; every refusal names its parameter.</summary>
internal static class RequestReader
{
    private const string InvalidValue = "invalid_value";
    private const string Unsupported = "unsupported_parameter";

    public static async Task<T> ReadBodyAsync<T>(HttpRequest request, JsonTypeInfo<T> type, long limit)
        where T : class
    {
        if (request.ContentLength > limit)
        {
            throw TooLarge(limit);
        }

        // Parsed first and bound second, so a body that is not JSON at all is told apart from a field of the wrong type.
        JsonDocument document;
        try
        {
            document = await JsonDocument.ParseAsync(request.Body, default, request.HttpContext.RequestAborted);
        }
        catch (JsonException e)
        {
            throw ApiException.BadRequest($"The request body is not valid JSON: {e.Message}");
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            throw TooLarge(limit);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw ApiException.BadRequest("The request body must be a JSON object.");
            }

            try
            {
                return document.Deserialize(type) ?? throw ApiException.BadRequest("The request body must be a JSON object.");
            }
            catch (JsonException e)
            {
                var param = e.Path is { Length: > 2 } path && path.StartsWith("$.", StringComparison.Ordinal) ? path[2..] : null;
                throw ApiException.BadRequest($"Invalid value for '{param}': {e.Message}", param);
            }
        }
    }

    public static GenerationSpec Chat(ChatCompletionRequest body, GatewayOptions options)
    {
        var (served, reference) = Model(body.Model, options);
        RequireOne(body.N);
        if (body.Logprobs is true || body.TopLogprobs is not null)
        {
            throw ApiException.BadRequest("logprobs are not supported.", body.Logprobs is true ? "logprobs" : "top_logprobs", Unsupported);
        }

        if (body.Tools.ValueKind == JsonValueKind.Array && body.Tools.GetArrayLength() > 0)
        {
            throw ApiException.BadRequest("Tools are not supported.", "tools", Unsupported);
        }

        if (body.ResponseFormat.ValueKind is not (JsonValueKind.Undefined or JsonValueKind.Null)
            && !(body.ResponseFormat.ValueKind == JsonValueKind.Object
                && body.ResponseFormat.TryGetProperty("type", out var format)
                && format.ValueKind == JsonValueKind.String
                && format.GetString() == "text"))
        {
            throw ApiException.BadRequest("Only response_format {\"type\": \"text\"} is supported.", "response_format", Unsupported);
        }

        var maxTokens = body.MaxCompletionTokens is not null
            ? MaxTokens(body.MaxCompletionTokens, "max_completion_tokens", options)
            : MaxTokens(body.MaxTokens, "max_tokens", options);
        return Spec(body, served, reference, Prompt.FromChat(Messages(body.Messages)), "messages", maxTokens);
    }

    public static GenerationSpec Completion(CompletionRequest body, GatewayOptions options)
    {
        var (served, reference) = Model(body.Model, options);
        RequireOne(body.N);
        if (body.BestOf is not (null or 1))
        {
            throw ApiException.BadRequest("best_of must be 1.", "best_of", InvalidValue);
        }

        if (body.Echo is true)
        {
            throw ApiException.BadRequest("echo is not supported.", "echo", Unsupported);
        }

        if (body.Suffix is not null)
        {
            throw ApiException.BadRequest("suffix is not supported.", "suffix", Unsupported);
        }

        if (body.Logprobs is not null)
        {
            throw ApiException.BadRequest("logprobs are not supported.", "logprobs", Unsupported);
        }

        return Spec(body, served, reference, CompletionPrompt(body.Prompt), "prompt", MaxTokens(body.MaxTokens, "max_tokens", options));
    }

    /// <summary>The spec from a request's prompt and length and the sampling, stop and streaming fields both kinds share.</summary>
    private static GenerationSpec Spec(GenerationRequestBody body, string served, string reference, Prompt prompt, string promptParameter, int maxTokens) =>
        new(
            served,
            reference,
            prompt,
            promptParameter,
            maxTokens,
            Sampling(body),
            StopStrings(body.Stop),
            body.IgnoreEos is not true,
            Stream(body.Stream, body.StreamOptions),
            body.StreamOptions?.IncludeUsage is true,
            body.ReturnTokenIds is true);

    private static ApiException TooLarge(long limit) =>
        new(StatusCodes.Status413PayloadTooLarge, $"The request body is larger than this gateway's limit of {limit} bytes.", ApiException.InvalidRequest, null, "request_too_large");

    private static (string Served, string Reference) Model(string? model, GatewayOptions options)
    {
        var served = string.IsNullOrWhiteSpace(model) ? options.DefaultModel : model;
        return options.ServedModels().TryGetValue(served, out var reference) ? (served, reference) : throw ApiException.UnknownModel(served);
    }

    private static void RequireOne(int? n)
    {
        if (n is not (null or 1))
        {
            throw ApiException.BadRequest($"n must be 1 (one choice per request), got {n}.", "n", InvalidValue);
        }
    }

    private static int MaxTokens(int? value, string param, GatewayOptions options) => value switch
    {
        null => options.DefaultMaxTokens,
        < 1 => throw ApiException.BadRequest($"{param} must be at least 1, got {value}.", param, InvalidValue),
        _ => value.Value,
    };

    private static bool Stream(bool? stream, StreamOptionsBody? streamOptions)
    {
        if (streamOptions is not null && stream is not true)
        {
            throw ApiException.BadRequest("stream_options is only allowed when stream is true.", "stream_options", InvalidValue);
        }

        return stream is true;
    }

    private static SamplingSettings Sampling(GenerationRequestBody body)
    {
        if (body.Temperature is { } t && !(t is >= 0 and <= 2))
        {
            throw ApiException.BadRequest($"temperature must be between 0 and 2, got {t}.", "temperature", InvalidValue);
        }

        if (body.TopP is { } p && !(p is > 0 and <= 1))
        {
            throw ApiException.BadRequest($"top_p must be in (0, 1], got {p}.", "top_p", InvalidValue);
        }

        if (body.TopK is < -1)
        {
            throw ApiException.BadRequest($"top_k must be >= 0 (or -1 for off), got {body.TopK}.", "top_k", InvalidValue);
        }

        if (body.MinP is { } m && !(m is >= 0 and < 1))
        {
            throw ApiException.BadRequest($"min_p must be in [0, 1), got {m}.", "min_p", InvalidValue);
        }

        if (body.RepetitionPenalty is { } r && !(r > 0 && float.IsFinite(r)))
        {
            throw ApiException.BadRequest($"repetition_penalty must be a finite number > 0, got {r}.", "repetition_penalty", InvalidValue);
        }

        // Granary's sampler has a repetition penalty, not OpenAI's additive penalties: refuse rather than ignore them.
        if (body.PresencePenalty is not (null or 0))
        {
            throw ApiException.BadRequest("presence_penalty is not supported (use repetition_penalty).", "presence_penalty", Unsupported);
        }

        if (body.FrequencyPenalty is not (null or 0))
        {
            throw ApiException.BadRequest("frequency_penalty is not supported (use repetition_penalty).", "frequency_penalty", Unsupported);
        }

        if (body.Seed is < int.MinValue or > int.MaxValue)
        {
            throw ApiException.BadRequest($"seed must fit in 32 bits, got {body.Seed}.", "seed", InvalidValue);
        }

        return new SamplingSettings
        {
            Temperature = body.Temperature,
            TopP = body.TopP,
            TopK = body.TopK == -1 ? 0 : body.TopK,
            MinP = body.MinP,
            RepetitionPenalty = body.RepetitionPenalty,
            Seed = (int?)body.Seed,
        };
    }

    private static string[] StopStrings(JsonElement stop)
    {
        string[] stops = stop.ValueKind switch
        {
            JsonValueKind.Undefined or JsonValueKind.Null => [],
            JsonValueKind.String => [stop.GetString()!],
            JsonValueKind.Array when stop.EnumerateArray().All(item => item.ValueKind == JsonValueKind.String) =>
                [.. stop.EnumerateArray().Select(item => item.GetString()!)],
            _ => throw ApiException.BadRequest("stop must be a string or an array of strings.", "stop", InvalidValue),
        };
        if (stops.Any(string.IsNullOrEmpty))
        {
            throw ApiException.BadRequest("Stop strings must not be empty.", "stop", InvalidValue);
        }

        return stops;
    }

    private static ChatTurn[] Messages(List<ChatMessageBody?>? messages)
    {
        if (messages is null || messages.Count == 0)
        {
            throw ApiException.BadRequest("messages must be a non-empty array.", "messages", InvalidValue);
        }

        var turns = new ChatTurn[messages.Count];
        for (var i = 0; i < messages.Count; i++)
        {
            var message = messages[i] ?? throw ApiException.BadRequest($"messages[{i}] must be an object.", $"messages[{i}]", InvalidValue);
            var role = message.Role switch
            {
                "system" or "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                null => throw ApiException.BadRequest($"messages[{i}].role is missing.", $"messages[{i}].role", InvalidValue),
                var other => throw ApiException.BadRequest(
                    $"messages[{i}].role '{other}' is not supported (system, developer, user, assistant).", $"messages[{i}].role", InvalidValue),
            };
            turns[i] = new ChatTurn(role, Content(message.Content, $"messages[{i}].content"));
        }

        return turns;
    }

    private static string Content(JsonElement content, string param)
    {
        if (content.ValueKind == JsonValueKind.String)
        {
            return content.GetString()!;
        }

        if (content.ValueKind != JsonValueKind.Array)
        {
            throw ApiException.BadRequest($"{param} must be a string or an array of text parts.", param, InvalidValue);
        }

        var text = new System.Text.StringBuilder();
        var index = 0;
        foreach (var part in content.EnumerateArray())
        {
            if (part.ValueKind != JsonValueKind.Object
                || !part.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String || type.GetString() != "text"
                || !part.TryGetProperty("text", out var partText) || partText.ValueKind != JsonValueKind.String)
            {
                throw ApiException.BadRequest($"{param}[{index}] must be a text part {{\"type\": \"text\", \"text\": \"...\"}}; other parts are not supported.", $"{param}[{index}]", Unsupported);
            }

            text.Append(partText.GetString());
            index++;
        }

        return text.ToString();
    }

    private static Prompt CompletionPrompt(JsonElement prompt)
    {
        const string Param = "prompt";
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String:
                return Prompt.FromText(prompt.GetString()!, useChatTemplate: false);
            case JsonValueKind.Array when prompt.GetArrayLength() > 0:
                var items = prompt.EnumerateArray().ToList();
                if (items.All(item => item.ValueKind == JsonValueKind.Number))
                {
                    return Prompt.FromTokenIds(TokenIds(items, Param));
                }

                if (items.Count == 1 && items[0].ValueKind == JsonValueKind.String)
                {
                    return Prompt.FromText(items[0].GetString()!, useChatTemplate: false);
                }

                if (items.Count == 1 && items[0].ValueKind == JsonValueKind.Array && items[0].GetArrayLength() > 0)
                {
                    return Prompt.FromTokenIds(TokenIds([.. items[0].EnumerateArray()], Param));
                }

                if (items.Count > 1 && items.All(item => item.ValueKind is JsonValueKind.String or JsonValueKind.Array))
                {
                    throw ApiException.BadRequest("One prompt per request: a batch of prompts is not supported.", Param, Unsupported);
                }

                break;
        }

        throw ApiException.BadRequest("prompt must be a string, an array of token ids, or an array holding one of these.", Param, InvalidValue);
    }

    private static int[] TokenIds(List<JsonElement> items, string param)
    {
        var ids = new int[items.Count];
        for (var i = 0; i < ids.Length; i++)
        {
            if (items[i].ValueKind != JsonValueKind.Number || !items[i].TryGetInt32(out ids[i]) || ids[i] < 0)
            {
                throw ApiException.BadRequest($"Token ids must be non-negative integers; item {i} is {items[i].GetRawText()}.", param, InvalidValue);
            }
        }

        return ids;
    }
}
