using Granary.Client;
using Granary.Gateway;
using Granary.Gateway.Api;
using Granary.Gateway.Metrics;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

public static class GranaryGatewayServiceCollectionExtensions
{
    /// <summary>
    /// Adds the gateway's services to a web application. The cluster connection comes from the host: an
    /// <see cref="IClusterClient"/> (from <c>AddGranaryClient</c>, or a silo's own); a <see cref="GranaryClient"/> is
    /// made over it unless one is registered. Map the endpoints with <see cref="GranaryGatewayApplicationExtensions.UseGranaryGateway"/>.
    /// </summary>
    public static IServiceCollection AddGranaryGateway(this IServiceCollection services, Action<GatewayOptions>? configure = null)
    {
        var options = services.AddOptions<GatewayOptions>().ValidateOnStart();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<GatewayOptions>, GatewayOptionsValidator>());
        services.TryAddSingleton(provider => new GranaryClient(provider.GetRequiredService<IClusterClient>()));
        services.TryAddSingleton<GatewayMetrics>();
        services.TryAddSingleton<GenerationRunner>();
        return services;
    }

    /// <summary>
    /// Runs the gateway as its own HTTP server inside this host (a silo, or any host with an <see cref="IClusterClient"/>),
    /// listening where <paramref name="configure"/> says. It starts and stops with the host.
    /// </summary>
    public static IServiceCollection AddGranaryGatewayServer(this IServiceCollection services, Action<GatewayOptions>? configure = null)
    {
        var options = new GatewayOptions();
        configure?.Invoke(options);
        var validation = new GatewayOptionsValidator().Validate(null, options);
        if (validation.Failed)
        {
            throw new OptionsValidationException(nameof(GatewayOptions), typeof(GatewayOptions), validation.Failures);
        }

        services.TryAddSingleton(provider => ActivatorUtilities.CreateInstance<GatewayServer>(provider, options));
        services.AddHostedService(provider => provider.GetRequiredService<GatewayServer>());
        return services;
    }
}

public static class GranaryGatewayApplicationExtensions
{
    /// <summary>
    /// Maps the gateway: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /metrics,
    /// behind the middleware that applies the body limit and API key and writes OpenAI-style errors.
    /// </summary>
    public static WebApplication UseGranaryGateway(this WebApplication app)
    {
        app.UseMiddleware<GatewayMiddleware>();
        var api = app.MapGroup("").WithMetadata(new GatewayEndpoint(RequiresKey: true));
        api.MapChatCompletionsApi();
        api.MapCompletionsApi();
        api.MapModelsApi();
        api.MapMetricsApi();
        app.MapGroup("").WithMetadata(new GatewayEndpoint(RequiresKey: false)).MapHealthApi();
        return app;
    }

    /// <summary>Answers requests no endpoint matched with an OpenAI-style 404 (for a host that serves only the gateway).</summary>
    internal static WebApplication MapGatewayFallback(this WebApplication app)
    {
        app.MapFallback((HttpContext context) => throw new ApiException(
                StatusCodes.Status404NotFound,
                $"Unknown request URL: {context.Request.Method} {context.Request.Path}.",
                ApiException.InvalidRequest,
                null,
                "unknown_url"))
            .WithMetadata(new GatewayEndpoint(RequiresKey: false));
        return app;
    }
}
