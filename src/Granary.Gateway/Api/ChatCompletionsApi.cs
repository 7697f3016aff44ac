using Granary.Abstractions;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;

namespace Granary.Gateway.Api;

/// <summary>POST /v1/chat/completions: the assistant's next turn, whole or streamed as chat.completion.chunk events.</summary>
internal static class ChatCompletionsApi
{
    public const string Route = "/v1/chat/completions";

    public static IEndpointRouteBuilder MapChatCompletionsApi(this IEndpointRouteBuilder routes)
    {
        routes.MapPost(Route, HandleAsync);
        return routes;
    }

    private static async Task HandleAsync(HttpContext context, GenerationRunner runner, IOptions<GatewayOptions> options)
    {
        var body = await RequestReader.ReadBodyAsync(context.Request, GatewayJsonContext.Default.ChatCompletionRequest, options.Value.MaxRequestBodyBytes);
        var spec = RequestReader.Chat(body, options.Value);
        var id = "chatcmpl-" + Guid.NewGuid().ToString("N")[..24];
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        await using var generation = await runner.StartAsync(spec, context.RequestAborted);
        if (spec.Stream)
        {
            await StreamAsync(context, runner, spec, generation, id, created);
            return;
        }

        var (text, tokens, summary) = await Completions.CollectAsync(generation, runner, spec, context.RequestAborted);
        var response = new ChatCompletion(
            id,
            "chat.completion",
            created,
            spec.ServedModel,
            [new ChatChoice(0, new ChatMessageOut("assistant", text), null, Completions.FinishReason(summary), spec.ReturnTokenIds ? tokens : null)],
            Usage.Of(generation.PromptTokens, summary.GeneratedTokens));
        await context.Response.WriteAsJsonAsync(response, GatewayJsonContext.Default.ChatCompletion, cancellationToken: context.RequestAborted);
    }

    private static Task StreamAsync(HttpContext context, GenerationRunner runner, GenerationSpec spec, RunningGeneration generation, string id, long created)
    {
        ChatCompletionChunk Chunk(ChatDelta delta, string? finishReason, int[]? tokenIds, Usage? usage = null) =>
            new(id, "chat.completion.chunk", created, spec.ServedModel, usage is null ? [new ChatChunkChoice(0, delta, null, finishReason, tokenIds)] : [], usage);

        // The first event names the role, as OpenAI's does; the last delta is empty.
        return Completions.StreamAsync(
            context,
            runner,
            spec,
            generation,
            GatewayJsonContext.Default.ChatCompletionChunk,
            (text, finishReason, tokenIds) => Chunk(new ChatDelta(null, text), finishReason, tokenIds),
            usage => Chunk(new ChatDelta(null, null), null, null, usage),
            opening: Chunk(new ChatDelta("assistant", ""), null, null));
    }
}
