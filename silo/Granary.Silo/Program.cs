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
builder.Configuration.GetSection(GranarySiloOptions.SectionName).Bind(options);
var validation = new GranarySiloOptionsValidator().Validate(null, options);
if (validation.Failed)
{
    Console.Error.WriteLine($"Granary.Silo: invalid configuration: {validation.FailureMessage}");
    return 2;
}

// SIGTERM and Ctrl+C stop the host, which lets the silo leave the cluster gracefully within this time.
builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = TimeSpan.FromSeconds(30));
builder.UseOrleans(silo => silo.UseGranarySilo(options));

using var host = builder.Build();
var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
var logger = host.Services.GetRequiredService<ILoggerFactory>().CreateLogger("Granary.Silo");
lifetime.ApplicationStarted.Register(() => SiloLog.Ready(logger, options.EffectiveSiloName, options.ClusterId, options.SiloPort, options.GatewayPort, options.Membership.Provider));
lifetime.ApplicationStopping.Register(() => SiloLog.Stopping(logger, options.EffectiveSiloName));
await host.RunAsync();
return 0;
