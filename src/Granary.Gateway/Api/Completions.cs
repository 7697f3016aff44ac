using System.Text;
using System.Text.Json.Serialization.Metadata;
using Granary.Abstractions;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Http;

namespace Granary.Gateway.Api;

/// <summary>What the chat and text completion endpoints share: collecting a whole generation, or streaming it.</summary>
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

    /// <summary>
    /// Streams a generation as server-sent events: <paramref name="opening"/> if given, an event of each new text (with
    /// its token id when asked), one with the finish reason and no text, the usage when asked, then [DONE]. A failure
    /// once the stream has begun goes out as an error event.
    /// </summary>
    /// <param name="piece">The event of (text, finish reason, token ids); text is null in the finishing event.</param>
    public static async Task StreamAsync<TEvent>(
        HttpContext context,
        GenerationRunner runner,
        GenerationSpec spec,
        RunningGeneration generation,
        JsonTypeInfo<TEvent> type,
        Func<string?, string?, int[]?, TEvent> piece,
        Func<Usage, TEvent> usage,
        TEvent? opening = null)
        where TEvent : class
    {
        await ServerSentEvents.BeginAsync(context);
        if (opening is not null)
        {
            await ServerSentEvents.WriteAsync(context, opening, type);
        }

        try
        {
            await foreach (var chunk in generation.ReadAllAsync())
            {
                if (chunk.Text.Length > 0 || (spec.ReturnTokenIds && chunk.HasToken))
                {
                    int[]? ids = spec.ReturnTokenIds ? chunk.HasToken ? [chunk.TokenId] : [] : null;
                    await ServerSentEvents.WriteAsync(context, piece(chunk.Text, null, ids), type);
                }
            }

            var summary = RequireSummary(generation);
            await ServerSentEvents.WriteAsync(context, piece(null, FinishReason(summary), null), type);
            if (spec.IncludeUsage)
            {
                await ServerSentEvents.WriteAsync(context, usage(Usage.Of(generation.PromptTokens, summary.GeneratedTokens)), type);
            }

            await ServerSentEvents.DoneAsync(context);
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested)
        {
            await ServerSentEvents.ErrorAsync(context, runner.ToApiException(e, spec));
        }
    }
}
