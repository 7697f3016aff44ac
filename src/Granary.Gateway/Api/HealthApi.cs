using Granary.Client;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Granary.Gateway.Api;

/// <summary>GET /health: 200 while the cluster answers and has an active silo, 503 otherwise. Needs no API key.</summary>
internal static class HealthApi
{
    public const string Route = "/health";

    public static readonly TimeSpan StatusTimeout = TimeSpan.FromSeconds(5);

    public static IEndpointRouteBuilder MapHealthApi(this IEndpointRouteBuilder routes)
    {
        routes.MapGet(Route, HandleAsync);
        return routes;
    }

    private static async Task<IResult> HandleAsync(GranaryClient client, HttpContext context)
    {
        try
        {
            var status = await client.StatusAsync(context.RequestAborted).WaitAsync(StatusTimeout, context.RequestAborted);
            var active = status.Silos.Count(silo => silo.Status == "Active");
            return active > 0
                ? TypedResults.Json(new HealthReport("ok", active, status.Silos.Length, null), GatewayJsonContext.Default.HealthReport)
                : TypedResults.Json(new HealthReport("unavailable", 0, status.Silos.Length, "no active silo"), GatewayJsonContext.Default.HealthReport, statusCode: StatusCodes.Status503ServiceUnavailable);
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested)
        {
            return TypedResults.Json(new HealthReport("unavailable", 0, 0, e.Message), GatewayJsonContext.Default.HealthReport, statusCode: StatusCodes.Status503ServiceUnavailable);
        }
    }
}
