using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;

namespace Granary.Gateway.Api;

/// <summary>Writes an OpenAI event stream: "data: {json}\n\n" per event, flushed at once, and "data: [DONE]\n\n" at the end.</summary>
internal static class ServerSentEvents
{
    private static readonly byte[] s_prefix = "data: "u8.ToArray();
    private static readonly byte[] s_separator = "\n\n"u8.ToArray();
    private static readonly byte[] s_done = "data: [DONE]\n\n"u8.ToArray();

    public static async Task BeginAsync(HttpContext context)
    {
        context.Response.StatusCode = StatusCodes.Status200OK;
        context.Response.ContentType = "text/event-stream; charset=utf-8";
        context.Response.Headers.CacheControl = "no-cache";
        // Proxies such as nginx would otherwise buffer the stream.
        context.Response.Headers["X-Accel-Buffering"] = "no";
        context.Features.Get<IHttpResponseBodyFeature>()?.DisableBuffering();
        await context.Response.StartAsync(context.RequestAborted);
    }

    public static async Task WriteAsync<T>(HttpContext context, T value, JsonTypeInfo<T> type)
    {
        var body = context.Response.Body;
        await body.WriteAsync(s_prefix, context.RequestAborted);
        await JsonSerializer.SerializeAsync(body, value, type, context.RequestAborted);
        await body.WriteAsync(s_separator, context.RequestAborted);
        await body.FlushAsync(context.RequestAborted);
    }

    public static async Task DoneAsync(HttpContext context)
    {
        await context.Response.Body.WriteAsync(s_done, context.RequestAborted);
        await context.Response.Body.FlushAsync(context.RequestAborted);
    }

    /// <summary>A failure after the stream began: an error event as OpenAI sends it, and no [DONE].</summary>
    public static Task ErrorAsync(HttpContext context, ApiException error) =>
        WriteAsync(context, error.ToResponse(), GatewayJsonContext.Default.ErrorResponse);
}
