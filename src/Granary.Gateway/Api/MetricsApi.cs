using Granary.Abstractions;
using Granary.Client;
using Granary.Gateway.Metrics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Granary.Gateway.Api;

/// <summary>GET /metrics: the gateway's counters and the cluster's per-silo state in Prometheus text format.</summary>
internal static class MetricsApi
{
    public const string Route = "/metrics";

    public static IEndpointRouteBuilder MapMetricsApi(this IEndpointRouteBuilder routes)
    {
        routes.MapGet(Route, HandleAsync);
        return routes;
    }

    private static async Task<IResult> HandleAsync(GranaryClient client, GatewayMetrics metrics, HttpContext context)
    {
        ClusterStatus? status = null;
        string? problem = null;
        try
        {
            status = await client.StatusAsync(context.RequestAborted).WaitAsync(HealthApi.StatusTimeout, context.RequestAborted);
        }
        catch (Exception e) when (!context.RequestAborted.IsCancellationRequested)
        {
            // A scrape still reports the gateway's own series while the cluster cannot be read.
            problem = e.Message;
        }

        return TypedResults.Text(metrics.Render(status, problem), "text/plain; version=0.0.4; charset=utf-8");
    }
}
