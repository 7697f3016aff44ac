using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using Granary.Abstractions;
using Granary.Client;

namespace Granary.Cli.Commands;

/// <summary>`granary status`: the cluster's silos, memory, shards, loaded models and running work.</summary>
internal static class StatusCommand
{
    public const string Summary = "show a Granary cluster: silos, memory, shards, models, running work";

    public static async Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(args, ClusterConnection.ValueOptions, ["--json"]);
        using var cancel = ConsoleCancellation.Create();
        await using var client = await ClusterConnection.ConnectAsync(arguments, cancel.Token);
        var status = await client.StatusAsync(cancel.Token);
        if (arguments.Has("--json"))
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(status, StatusJsonContext.Default.ClusterStatus));
            return 0;
        }

        Print(status, Console.Out);
        return 0;
    }

    private static void Print(ClusterStatus status, TextWriter output)
    {
        output.WriteLine($"{"SILO",-20} {"ADDRESS",-22} {"STATUS",-10} {"BACKEND",-8} {"AVAILABLE",10} {"MODELS",10}");
        foreach (var silo in status.Silos)
        {
            var host = silo.Host;
            output.WriteLine(
                $"{silo.SiloName,-20} {silo.Address,-22} {silo.Status,-10} {host?.Backend ?? "-",-8} " +
                $"{(host is null ? "-" : Gib(host.Memory.AvailableBytes)),10} {(host is null ? "-" : Gib(host.Memory.ModelBytes)),10}");
            if (silo.Problem is not null)
            {
                output.WriteLine($"  unreachable: {silo.Problem}");
            }

            foreach (var shard in host?.Shards ?? [])
            {
                var assignment = shard.Assignment;
                output.WriteLine(
                    $"  shard {assignment.Shard.Index} of {assignment.Shard.Model}: layers {assignment.FirstLayer}-{assignment.FirstLayer + assignment.LayerCount - 1}, " +
                    $"stage {assignment.PipelineStage + 1}/{assignment.PipelineStageCount}, tensor rank {assignment.TensorRank + 1}/{assignment.TensorGroupSize}, {Gib(shard.WeightBytes)}");
            }

            foreach (var work in host?.Work ?? [])
            {
                output.WriteLine($"  job {work.JobId} on {work.Model}: {work.PromptTokens} prompt + {work.GeneratedTokens} generated tokens since {work.StartedAt:HH:mm:ss}");
            }
        }

        foreach (var plan in status.Models)
        {
            output.WriteLine(
                $"model {plan.Model}: plan {plan.Version}, {plan.LayerCount} layers, {Gib(plan.WeightBytes)}, " +
                $"{plan.Layout} on {string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName))}, coordinator on {plan.CoordinatorSilo ?? "-"}" +
                (plan.Group is { } group ? $", data plane {string.Join(" ", group.Peers.Select(peer => peer.ToString()))} ({group.Backend})" : ""));
        }
    }

    private static string Gib(long bytes) => string.Create(CultureInfo.InvariantCulture, $"{bytes / (1024.0 * 1024 * 1024):F2} GiB");
}

/// <summary>
/// The options that say which cluster to talk to, shared by every command that goes through the client SDK:
/// --gateway ADDRESS:PORT (repeatable; default 127.0.0.1:30000), --membership localhost|postgres,
/// --connection "Host=...", --cluster-id, --service-id.
/// </summary>
internal static class ClusterConnection
{
    public static readonly string[] ValueOptions = ["--gateway", "--membership", "--connection", "--cluster-id", "--service-id"];

    /// <summary>The flag that sends `generate` and `chat` through the client SDK to a cluster instead of a model in this process.</summary>
    public const string ClusterFlag = "--cluster";

    /// <summary>Options that only mean something in this process; a cluster's silos choose these themselves.</summary>
    private static readonly string[] LocalOnlyOptions = ["--backend", "--threads"];

    /// <summary>
    /// The cluster's name for the model: --model as given (a folder under the silos' model directory, or a path on them),
    /// or the built-in model; with --adapter-path (resolved on the silos the same way) the silos serve it with those adapters merged.
    /// </summary>
    public static string ModelReference(CommandArguments arguments)
    {
        foreach (var option in LocalOnlyOptions)
        {
            if (arguments.Get(option) is not null)
            {
                throw new UsageException($"{option} does not apply with --cluster: each silo's own settings choose it.");
            }
        }

        if (arguments.Has("--pipeline"))
        {
            throw new UsageException("--pipeline does not apply with --cluster: the silos' coordinator settings choose the layout (Granary:Coordinator:Layout).");
        }

        var model = arguments.Get("--model") ?? GranaryClient.BuiltInModel;
        return arguments.Get("--adapter-path") is { } adapters ? ModelReferences.WithAdapters(model, adapters) : model;
    }

    /// <summary>Sampling options given on the command line; the rest are left to the model's generation_config.json on the silos.</summary>
    public static SamplingSettings Sampling(CommandArguments arguments) => new()
    {
        Temperature = FloatOrNull(arguments, "--temperature"),
        TopP = FloatOrNull(arguments, "--top-p"),
        TopK = arguments.GetIntOrNull("--top-k"),
        MinP = FloatOrNull(arguments, "--min-p"),
        RepetitionPenalty = FloatOrNull(arguments, "--repetition-penalty"),
        RepetitionContextSize = arguments.GetInt("--repetition-context-size", 64),
        Seed = arguments.GetIntOrNull("--seed"),
    };

    private static float? FloatOrNull(CommandArguments arguments, string name) => arguments.Get(name) is null ? null : arguments.GetFloat(name, 0);

    public static Task<GranaryClient> ConnectAsync(CommandArguments arguments, CancellationToken cancellationToken)
    {
        var gateways = arguments.GetAll("--gateway");
        var connection = arguments.Get("--connection");
        return GranaryClient.ConnectAsync(
            options =>
            {
                options.Membership = arguments.Get("--membership") ?? (connection is null ? GranaryClientOptions.Localhost : GranaryClientOptions.Postgres);
                options.ConnectionString = connection ?? "";
                options.ClusterId = arguments.Get("--cluster-id") ?? options.ClusterId;
                options.ServiceId = arguments.Get("--service-id") ?? options.ServiceId;
                if (gateways.Count > 0)
                {
                    options.Gateways = [.. gateways];
                }
            },
            cancellationToken);
    }
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, UseStringEnumConverter = true)]
[JsonSerializable(typeof(ClusterStatus))]
internal sealed partial class StatusJsonContext : JsonSerializerContext;
