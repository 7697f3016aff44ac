using System.Text.Json;
using Microsoft.AspNetCore.Http;

namespace Granary.Gateway.Protocol;

/// <summary>
/// A request the gateway refuses or cannot serve, answered with the OpenAI error body
/// {"error":{"message","type","param","code"}} and <see cref="StatusCode"/>.
/// </summary>
internal sealed class ApiException(int statusCode, string message, string type, string? param = null, string? code = null)
    : Exception(message)
{
    public const string InvalidRequest = "invalid_request_error";
    public const string Authentication = "authentication_error";
    public const string ServerError = "server_error";
    public const string Unavailable = "service_unavailable_error";

    public int StatusCode { get; } = statusCode;

    public string Type { get; } = type;

    public string? Param { get; } = param;

    public string? Code { get; } = code;

    public ErrorResponse ToResponse() => new(new ErrorBody(Message, Type, Param, Code));

    public static ApiException BadRequest(string message, string? param = null, string? code = null) =>
        new(StatusCodes.Status400BadRequest, message, InvalidRequest, param, code);

    public static ApiException UnknownModel(string model) =>
        new(StatusCodes.Status404NotFound, $"The model '{model}' does not exist or is not served here; GET /v1/models lists the served models.", InvalidRequest, "model", "model_not_found");

    public static ApiException PromptTooLong(int promptTokens, int limit, string param) =>
        BadRequest($"The prompt has {promptTokens} tokens; this gateway accepts at most {limit}.", param, "context_length_exceeded");
}

internal static class ApiErrors
{
    /// <summary>Writes <paramref name="error"/> as the response, unless the response has started (then the caller must end the stream).</summary>
    public static async Task WriteAsync(HttpContext context, ApiException error)
    {
        context.Response.StatusCode = error.StatusCode;
        context.Response.ContentType = "application/json";
        await JsonSerializer.SerializeAsync(context.Response.Body, error.ToResponse(), GatewayJsonContext.Default.ErrorResponse, context.RequestAborted);
    }
}
