using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Granary.Gateway;

/// <summary>Builds the web application that serves only the gateway, for `granary serve` and for a silo.</summary>
public static class GatewayApplication
{
    /// <param name="addCluster">Registers the cluster connection: an <see cref="IClusterClient"/>.</param>
    /// <param name="loggerFactory">The host's logging, when the gateway runs inside another host; null logs to the console.</param>
    public static WebApplication Create(GatewayOptions options, Action<IServiceCollection> addCluster, ILoggerFactory? loggerFactory = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            ApplicationName = typeof(GatewayApplication).Assembly.GetName().Name,
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            if (options.Host == "localhost")
            {
                kestrel.ListenLocalhost(options.Port);
            }
            else
            {
                kestrel.Listen(IPAddress.Parse(options.Host), options.Port);
            }
        });
        if (loggerFactory is null)
        {
            builder.Logging.AddFilter("Microsoft", LogLevel.Warning).AddFilter("Orleans", LogLevel.Warning);
        }
        else
        {
            builder.Logging.ClearProviders();
            builder.Services.AddSingleton(loggerFactory);
        }

        addCluster(builder.Services);
        builder.Services.AddGranaryGateway(options.CopyTo);
        var app = builder.Build();
        app.UseGranaryGateway();
        app.MapGatewayFallback();
        return app;
    }

    /// <summary>The address the started application listens on, e.g. http://127.0.0.1:8080/ (the real port when 0 was asked for).</summary>
    public static Uri Address(this WebApplication app)
    {
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses
            ?? throw new InvalidOperationException("The gateway's server reports no addresses.");
        return new Uri(addresses.First().TrimEnd('/') + "/");
    }
}

/// <summary>The gateway's HTTP server running inside a host that has a cluster connection, such as a silo.</summary>
public sealed partial class GatewayServer(IClusterClient cluster, ILoggerFactory loggerFactory, GatewayOptions options) : IHostedService, IAsyncDisposable
{
    private readonly ILogger _logger = loggerFactory.CreateLogger<GatewayServer>();
    private WebApplication? _app;

    /// <summary>Where the server listens once started.</summary>
    public Uri? Address { get; private set; }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        _app = GatewayApplication.Create(options, services => services.AddSingleton(cluster), loggerFactory);
        await _app.StartAsync(cancellationToken);
        Address = _app.Address();
        LogListening(_logger, Address, options.ApiKey is not null);
        if (options.ApiKey is null && options.Host is not ("127.0.0.1" or "::1" or "localhost"))
        {
            LogOpen(_logger, options.Host);
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_app is not null)
        {
            await _app.StopAsync(cancellationToken);
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync();
            _app = null;
        }
    }

    /// <summary>Launchers and tests wait for this line.</summary>
    [LoggerMessage(Level = LogLevel.Information, Message = "Granary REST gateway listening on {Address} (API key {KeyRequired})")]
    private static partial void LogListening(ILogger logger, Uri address, bool keyRequired);

    [LoggerMessage(Level = LogLevel.Warning, Message = "The REST gateway listens on {Host} without an API key: anyone who can reach it can use the cluster")]
    private static partial void LogOpen(ILogger logger, string host);
}
