using Granary.Abstractions;
using Granary.Client;
using Granary.Gateway;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;

namespace Granary.Cli.Commands;

/// <summary>
/// `granary serve`: the OpenAI-compatible REST gateway as its own process, an Orleans client of the cluster, so a
/// silo that dies never takes the API down with it.
/// </summary>
internal static class ServeCommand
{
    public const string Summary = "serve the OpenAI-compatible REST API (/v1/chat/completions, ...) for a Granary cluster";

    private static readonly string[] s_valueOptions =
    [
        "--host", "--port", "--model", "--adapter-path", "--served-model", "--served-adapter", "--api-key", "--max-body-bytes", "--max-prompt-tokens", "--default-max-tokens",
        .. ClusterConnection.ValueOptions,
    ];

    public static async Task<int> RunAsync(string[] args)
    {
        if (args is ["-h" or "--help"])
        {
            PrintUsage();
            return 0;
        }

        var arguments = CommandArguments.Parse(args, s_valueOptions, []);
        var options = GatewaySettings(arguments);
        var validation = new GatewayOptionsValidator().Validate(null, options);
        if (validation.Failed)
        {
            throw new UsageException(validation.FailureMessage);
        }

        var client = ClientSettings(arguments);
        var cluster = new GranaryClientOptions();
        client(cluster);
        await using var app = GatewayApplication.Create(options, services => services.AddGranaryClient(client));
        try
        {
            // The Orleans client connects while the application starts.
            using var timeout = new CancellationTokenSource(cluster.ConnectTimeout);
            await app.StartAsync(timeout.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or OrleansException or Orleans.Runtime.Messaging.ConnectionFailedException or TimeoutException)
        {
            var where = cluster.Membership == GranaryClientOptions.Postgres ? "the gateways in the PostgreSQL membership table" : string.Join(", ", cluster.Gateways);
            var reason = e is OperationCanceledException ? $"no gateway answered within {cluster.ConnectTimeout.TotalSeconds:F0} s" : e.Message;
            throw new GranaryConnectionException($"Could not connect to Granary cluster '{cluster.ClusterId}' at {where}: {reason}", e);
        }

        Console.Out.WriteLine($"Granary REST gateway listening on {app.Address()} for models {string.Join(", ", options.ServedModels().Keys)} (Ctrl+C stops it)");
        await app.WaitForShutdownAsync();
        return 0;
    }

    private static GatewayOptions GatewaySettings(CommandArguments arguments)
    {
        var options = new GatewayOptions
        {
            Host = arguments.Get("--host") ?? "127.0.0.1",
            Port = arguments.GetInt("--port", 8080),
            ApiKey = arguments.Get("--api-key") ?? (Environment.GetEnvironmentVariable("GRANARY_API_KEY") is { Length: > 0 } key ? key : null),
            DefaultModel = arguments.Get("--model") ?? GranaryClient.BuiltInModel,
        };
        options.MaxPromptTokens = arguments.GetInt("--max-prompt-tokens", options.MaxPromptTokens);
        options.DefaultMaxTokens = arguments.GetInt("--default-max-tokens", options.DefaultMaxTokens);
        if (arguments.Get("--max-body-bytes") is { } bytes)
        {
            options.MaxRequestBodyBytes = long.TryParse(bytes, out var limit) ? limit : throw new UsageException($"--max-body-bytes must be an integer, got '{bytes}'.");
        }

        foreach (var served in arguments.GetAll("--served-model"))
        {
            var (name, model) = NameValue("--served-model", "NAME=MODEL", served);
            options.Models[name] = model;
        }

        if (arguments.Get("--adapter-path") is { } adapters)
        {
            // The default model's name is served with the adapters merged.
            options.Models[options.DefaultModel] = WithAdapters(options.Models.TryGetValue(options.DefaultModel, out var model) ? model : options.DefaultModel, adapters);
        }

        foreach (var served in arguments.GetAll("--served-adapter"))
        {
            var (name, path) = NameValue("--served-adapter", "NAME=ADAPTER_FOLDER", served);
            options.Models[name] = WithAdapters(options.Models.TryGetValue(name, out var model) ? model : name, path);
        }

        return options;
    }

    private static (string Name, string Value) NameValue(string option, string form, string given)
    {
        var equals = given.IndexOf('=', StringComparison.Ordinal);
        if (equals <= 0 || equals == given.Length - 1)
        {
            throw new UsageException($"{option} takes {form}, got '{given}'.");
        }

        return (given[..equals], given[(equals + 1)..]);
    }

    private static string WithAdapters(string model, string adapters)
    {
        try
        {
            return ModelReferences.WithAdapters(model, adapters);
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }
    }

    /// <summary>The cluster connection from the same options `granary status` takes.</summary>
    private static Action<GranaryClientOptions> ClientSettings(CommandArguments arguments)
    {
        var gateways = arguments.GetAll("--gateway");
        var connection = arguments.Get("--connection");
        return options =>
        {
            options.Membership = arguments.Get("--membership") ?? (connection is null ? GranaryClientOptions.Localhost : GranaryClientOptions.Postgres);
            options.ConnectionString = connection ?? "";
            options.ClusterId = arguments.Get("--cluster-id") ?? options.ClusterId;
            options.ServiceId = arguments.Get("--service-id") ?? options.ServiceId;
            if (gateways.Count > 0)
            {
                options.Gateways = [.. gateways];
            }
        };
    }

    private static void PrintUsage()
    {
        Console.Out.WriteLine("usage: granary serve [--host 127.0.0.1] [--port 8080] [--model builtin] [--adapter-path ADAPTERS] [--served-model NAME=MODEL ...]");
        Console.Out.WriteLine("                     [--served-adapter NAME=ADAPTERS ...] (MODEL and ADAPTERS as the silos see them; MODEL@adapters=ADAPTERS also works)");
        Console.Out.WriteLine("                     [--api-key KEY (or GRANARY_API_KEY)] [--max-body-bytes N] [--max-prompt-tokens N] [--default-max-tokens N]");
        Console.Out.WriteLine("                     [--gateway ADDRESS:PORT ...] [--membership localhost|postgres] [--connection CONN] [--cluster-id ID] [--service-id ID]");
    }
}
