using System.Security.Cryptography;
using System.Text;
using Granary.Gateway.Metrics;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Granary.Gateway;

/// <summary>Marks the gateway's endpoints, so its middleware leaves the other endpoints of a host application alone.</summary>
internal sealed record GatewayEndpoint(bool RequiresKey);

/// <summary>
/// Around every gateway endpoint: the request body limit, the optional API key, OpenAI-style error bodies for
/// failures before a response starts, and the request counts by route and status.
/// </summary>
internal sealed partial class GatewayMiddleware(RequestDelegate next, GatewayMetrics metrics, IOptions<GatewayOptions> options, ILogger<GatewayMiddleware> logger)
{
    /// <summary>Status recorded for requests whose client went away (nginx's "client closed request").</summary>
    public const int ClientClosedRequest = 499;

    private readonly byte[]? _apiKey = options.Value.ApiKey is { } key ? Encoding.UTF8.GetBytes(key) : null;

    public async Task InvokeAsync(HttpContext context)
    {
        var endpoint = context.GetEndpoint();
        if (endpoint?.Metadata.GetMetadata<GatewayEndpoint>() is not { } gateway)
        {
            await next(context);
            return;
        }

        var route = (endpoint as RouteEndpoint)?.RoutePattern.RawText ?? "unmatched";
        var status = StatusCodes.Status500InternalServerError;
        try
        {
            if (context.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } bodyLimit)
            {
                bodyLimit.MaxRequestBodySize = options.Value.MaxRequestBodyBytes;
            }

            if (gateway.RequiresKey && _apiKey is not null && !HasKey(context.Request))
            {
                context.Response.Headers.WWWAuthenticate = "Bearer";
                throw new ApiException(StatusCodes.Status401Unauthorized, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", ApiException.Authentication, null, "invalid_api_key");
            }

            await next(context);
            status = context.Response.StatusCode;
        }
        catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
        {
            status = ClientClosedRequest;
        }
        catch (Exception e) when (!context.Response.HasStarted)
        {
            var error = e switch
            {
                ApiException api => api,
                BadHttpRequestException bad => new ApiException(bad.StatusCode, bad.Message, ApiException.InvalidRequest),
                _ => Unexpected(e),
            };
            status = error.StatusCode;
            await ApiErrors.WriteAsync(context, error);
        }
        catch (Exception e)
        {
            // The response has begun: all that can be done is to end it (the endpoints send stream errors themselves).
            LogFailedAfterStart(logger, route, e);
            status = context.Response.StatusCode;
            context.Abort();
        }
        finally
        {
            metrics.RequestFinished(route, status);
        }
    }

    private ApiException Unexpected(Exception e)
    {
        LogUnexpected(logger, e);
        return new ApiException(StatusCodes.Status500InternalServerError, $"The gateway failed: {e.Message}", ApiException.ServerError);
    }

    private bool HasKey(HttpRequest request)
    {
        var header = request.Headers.Authorization.ToString();
        const string Scheme = "Bearer ";
        if (!header.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }

        return CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header[Scheme.Length..].Trim()), _apiKey);
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Gateway request failed")]
    private static partial void LogUnexpected(ILogger logger, Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Request to {Route} failed after its response started")]
    private static partial void LogFailedAfterStart(ILogger logger, string route, Exception exception);
}
