using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Options;

namespace Granary.Gateway.Api;

/// <summary>GET /v1/models: the model names this gateway serves.</summary>
internal static class ModelsApi
{
    public const string Route = "/v1/models";

    // Served names are configuration, not files with a date: they are listed as created when the gateway started.
    private static readonly long s_started = DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    public static IEndpointRouteBuilder MapModelsApi(this IEndpointRouteBuilder routes)
    {
        routes.MapGet(Route, (IOptions<GatewayOptions> options) => TypedResults.Json(
            new ModelList("list", [.. options.Value.ServedModels().Keys.Order(StringComparer.Ordinal).Select(name => new ModelCard(name, "model", s_started, "granary"))]),
            GatewayJsonContext.Default.ModelList));
        return routes;
    }
}
