using System.Net;
using Granary.Client;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using Orleans.Configuration;

namespace Microsoft.Extensions.DependencyInjection;

public static class GranaryClientServiceCollectionExtensions
{
    /// <summary>
    /// Adds an Orleans client for a Granary cluster and the <see cref="GranaryClient"/> over it. The client connects
    /// when the host starts (or use <see cref="GranaryClient.ConnectAsync"/> outside a host).
    /// </summary>
    public static IServiceCollection AddGranaryClient(this IServiceCollection services, Action<GranaryClientOptions>? configure = null)
    {
        // Orleans configures clustering while services are registered, so the options are settled here, once.
        var options = new GranaryClientOptions();
        configure?.Invoke(options);
        var validation = new GranaryClientOptionsValidator().Validate(null, options);
        if (validation.Failed)
        {
            throw new OptionsValidationException(nameof(GranaryClientOptions), typeof(GranaryClientOptions), validation.Failures);
        }

        services.AddSingleton(Microsoft.Extensions.Options.Options.Create(options));
        services.AddOrleansClient(client =>
        {
            client.Configure<ClusterOptions>(cluster =>
            {
                cluster.ClusterId = options.ClusterId;
                cluster.ServiceId = options.ServiceId;
            });
            // Drop a dead silo's gateway within seconds, in step with the silos' failure detection.
            client.Configure<GatewayOptions>(gateway => gateway.GatewayListRefreshPeriod = TimeSpan.FromSeconds(5));
            if (options.Membership == GranaryClientOptions.Postgres)
            {
                client.UseAdoNetClustering(adoNet =>
                {
                    adoNet.Invariant = "Npgsql";
                    adoNet.ConnectionString = options.ConnectionString;
                });
            }
            else
            {
                client.UseStaticClustering([.. options.Gateways.Select(IPEndPoint.Parse)]);
            }
        });
        services.AddSingleton<GranaryClient>();
        return services;
    }
}
