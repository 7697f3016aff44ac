using Granary.Gateway;
using Granary.Silo;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

if (args is ["-h" or "--help" or "help"])
{
    SiloCommandLine.PrintUsage(Console.Out);
    return 0;
}

// appsettings.json beside the binary, then environment variables, then the command line (last one wins).
var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
builder.Configuration.AddCommandLine(args, SiloCommandLine.SwitchMappings);
builder.Logging.AddSimpleConsole(console =>
{
    console.SingleLine = true;
    console.TimestampFormat = "HH:mm:ss.fff ";
});

var options = new GranarySiloOptions();
try
{
    builder.Configuration.GetSection(GranarySiloOptions.SectionName).Bind(options);
}
catch (InvalidOperationException e)
{
    // A value of the wrong type (e.g. --layout Tensr): say which, without a stack trace.
    Console.Error.WriteLine($"Granary.Silo: invalid configuration: {e.Message} {e.InnerException?.Message}");
    return 2;
}

var validation = new GranarySiloOptionsValidator().Validate(null, options);
if (validation.Failed)
{
    Console.Error.WriteLine($"Granary.Silo: invalid configuration: {validation.FailureMessage}");
    return 2;
}

// SIGTERM and Ctrl+C stop the host, which lets the silo leave the cluster gracefully within this time.
builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = TimeSpan.FromSeconds(30));
builder.UseOrleans(silo => silo.UseGranarySilo(options));
if (options.ParentProcessId is { } parent)
{
    builder.Services.AddHostedService(services => new ParentProcessWatch(parent, services.GetRequiredService<IHostApplicationLifetime>()));
}

// The REST gateway runs inside the silo when the "Granary:Gateway" section (or --gateway-http-port) is given.
var gateway = builder.Configuration.GetSection(GatewayOptions.SectionName);
if (gateway.Exists())
{
    var gatewayOptions = new GatewayOptions();
    gateway.Bind(gatewayOptions);
    var gatewayValidation = new GatewayOptionsValidator().Validate(null, gatewayOptions);
    if (gatewayValidation.Failed)
    {
        Console.Error.WriteLine($"Granary.Silo: invalid configuration: {gatewayValidation.FailureMessage}");
        return 2;
    }

    builder.Services.AddGranaryGatewayServer(settings => gateway.Bind(settings));
}

using var host = builder.Build();
var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
var logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Granary.Silo");
lifetime.ApplicationStarted.Register(() => SiloLog.Ready(logger, options.EffectiveSiloName, options.ClusterId, options.SiloPort, options.GatewayPort, options.Membership.Provider));
lifetime.ApplicationStopping.Register(() => SiloLog.Stopping(logger, options.EffectiveSiloName));
await host.RunAsync();
return 0;
