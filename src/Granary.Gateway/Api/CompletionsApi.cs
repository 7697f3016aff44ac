using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;

namespace Granary.Gateway.Api;

/// <summary>POST /v1/completions: plain continuation of a text or token-id prompt (no chat format), whole or streamed.</summary>
internal static class CompletionsApi
{
    public const string Route = "/v1/completions";

    public static IEndpointRouteBuilder MapCompletionsApi(this IEndpointRouteBuilder routes)
    {
        routes.MapPost(Route, HandleAsync);
        return routes;
    }

    private static async Task HandleAsync(HttpContext context, GenerationRunner runner, IOptions<GatewayOptions> options)
    {
        var body = await RequestReader.ReadBodyAsync(context.Request, GatewayJsonContext.Default.CompletionRequest, options.Value.MaxRequestBodyBytes);
        var spec = RequestReader.Completion(body, options.Value);
        var id = "cmpl-" + Guid.NewGuid().ToString("N")[..24];
        var created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        await using var generation = await runner.StartAsync(spec, context.RequestAborted);
        var type = GatewayJsonContext.Default.Completion;
        if (!spec.Stream)
        {
            var (text, tokens, summary) = await Completions.CollectAsync(generation, runner, spec, context.RequestAborted);
            await context.Response.WriteAsJsonAsync(
                new Completion(
                    id,
                    "text_completion",
                    created,
                    spec.ServedModel,
                    [new CompletionChoice(0, text, null, Completions.FinishReason(summary), spec.ReturnTokenIds ? tokens : null)],
                    Usage.Of(generation.PromptTokens, summary.GeneratedTokens)),
                type,
                cancellationToken: context.RequestAborted);
            return;
        }

        await Completions.StreamAsync(
            context,
            runner,
            spec,
            generation,
            type,
            (text, finishReason, tokenIds) =>
                new Completion(id, "text_completion", created, spec.ServedModel, [new CompletionChoice(0, text ?? "", null, finishReason, tokenIds)], null),
            usage => new Completion(id, "text_completion", created, spec.ServedModel, [], usage));
    }
}
