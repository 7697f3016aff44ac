using System.Text;
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

    private static async Task StreamAsync(HttpContext context, GenerationRunner runner, GenerationSpec spec, RunningGeneration generation, string id, long created)
    {
        var type = GatewayJsonContext.Default.ChatCompletionChunk;
        ChatCompletionChunk Chunk(ChatDelta delta, string? finishReason, int[]? tokenIds) =>
            new(id, "chat.completion.chunk", created, spec.ServedModel, [new ChatChunkChoice(0, delta, null, finishReason, tokenIds)], null);

        await ServerSentEvents.BeginAsync(context);
        await ServerSentEvents.WriteAsync(context, Chunk(new ChatDelta("assistant", ""), null, null), type);
        try
        {
            await foreach (var chunk in generation.ReadAllAsync())
            {
                if (chunk.Text.Length > 0 || (spec.ReturnTokenIds && chunk.HasToken))
                {
                    int[]? ids = spec.ReturnTokenIds ? chunk.HasToken ? [chunk.TokenId] : [] : null;
                    await ServerSentEvents.WriteAsync(context, Chunk(new ChatDelta(null, chunk.Text), null, ids), type);
                }
            }

            var summary = Completions.RequireSummary(generation);
            await ServerSentEvents.WriteAsync(context, Chunk(new ChatDelta(null, null), Completions.FinishReason(summary), null), type);
            if (spec.IncludeUsage)
            {
                await ServerSentEvents.WriteAsync(
                    context,
                    new ChatCompletionChunk(id, "chat.completion.chunk", created, spec.ServedModel, [], Usage.Of(generation.PromptTokens, summary.GeneratedTokens)),
                    type);
            }

            await ServerSentEvents.DoneAsync(context);
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested)
        {
            await ServerSentEvents.ErrorAsync(context, runner.ToApiException(e, spec));
        }
    }
}

/// <summary>What the chat and text completion endpoints share.</summary>
internal static class Completions
{
    public static string FinishReason(GenerationSummary summary) => summary.FinishReason == Abstractions.FinishReason.Stop ? "stop" : "length";

    public static GenerationSummary RequireSummary(RunningGeneration generation) =>
        generation.Summary ?? throw new InvalidOperationException("The cluster's generation stream ended without its summary.");

    /// <summary>A whole generation's text, tokens and summary; failures become the API errors they stand for.</summary>
    public static async Task<(string Text, int[] Tokens, GenerationSummary Summary)> CollectAsync(
        RunningGeneration generation, GenerationRunner runner, GenerationSpec spec, CancellationToken aborted)
    {
        var text = new StringBuilder();
        var tokens = new List<int>();
        try
        {
            await foreach (var chunk in generation.ReadAllAsync())
            {
                text.Append(chunk.Text);
                if (chunk.HasToken)
                {
                    tokens.Add(chunk.TokenId);
                }
            }
        }
        catch (Exception e) when (!aborted.IsCancellationRequested)
        {
            throw runner.ToApiException(e, spec);
        }

        return (text.ToString(), [.. tokens], RequireSummary(generation));
    }
}
