using System.Text.Json;
using Granary.Collectives;
using Granary.Models.Generation;
using Granary.Models.Tokenization;

namespace Granary.Cli.Commands;

/// <summary>`granary generate`: one completion for a prompt, streamed to stdout.</summary>
internal static class GenerateCommand
{
    public const string Summary = "generate text for a prompt (--prompt TEXT or --prompt-ids 1,2,3); under `granary launch`, one rank of a sharded model (--pipeline); --cluster runs it on a Granary cluster";

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(
            args,
            [.. EngineOptions.ValueOptions, .. ClusterConnection.ValueOptions, "--prompt", "--prompt-ids"],
            [.. EngineOptions.FlagOptions, ClusterConnection.ClusterFlag, "--json", "--ignore-chat-template", "--no-eos"]);
        var prompt = arguments.Get("--prompt");
        var promptIds = arguments.GetIntList("--prompt-ids");
        if ((prompt is null) == (promptIds is null))
        {
            throw new UsageException("give exactly one of --prompt TEXT or --prompt-ids 1,2,3.");
        }

        var json = arguments.Has("--json");
        if (arguments.Has(ClusterConnection.ClusterFlag))
        {
            return RunOnClusterAsync(arguments, prompt, promptIds, json);
        }

        // Under `granary launch` every rank runs this command on its share of the model; only rank 0 prints.
        using var world = CollectiveOptions.FromEnvironment() is null ? null : Group.Init(backend: CollectiveBackendFor(arguments));
        var printing = world is not { Rank: > 0 };
        var progress = printing ? Console.Error : TextWriter.Null;
        var output = printing ? Console.Out : TextWriter.Null;
        using var loaded = EngineOptions.LoadModel(arguments, progress, world);
        var tokenizer = loaded.Tokenizer;
        if (promptIds is null)
        {
            if (tokenizer is null)
            {
                throw new UsageException($"the model in '{loaded.Directory}' has no tokenizer.json; use --prompt-ids.");
            }

            promptIds = [.. Encode(tokenizer, prompt!, arguments.Get("--system"), !arguments.Has("--ignore-chat-template"))];
        }

        var request = new GenerationRequest
        {
            PromptIds = promptIds,
            MaxTokens = arguments.GetInt("--max-tokens", 256),
            Sampling = EngineOptions.Sampling(arguments, loaded.Generation, world),
            StopStrings = arguments.GetAll("--stop"),
            StopAtEndOfSequence = !arguments.Has("--no-eos"),
        };
        var generator = new TextGenerator(loaded.Model, tokenizer, EngineOptions.EndOfSequenceIds(loaded));
        var statistics = new GenerationStatistics();
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        using var cancel = ConsoleCancellation.Create();
        foreach (var token in generator.Generate(request, statistics, cancel.Token))
        {
            if (token.HasToken)
            {
                tokens.Add(token.Id);
            }

            text.Append(token.Text);
            output.Write(token.Text);
            output.Flush();
        }

        output.WriteLine();
        progress.WriteLine(
            $"Prompt: {statistics.PromptTokens} tokens, {statistics.PromptTokensPerSecond:F1} tokens/s; " +
            $"Generation: {statistics.GeneratedTokens} tokens, {statistics.GenerationTokensPerSecond:F1} tokens/s");
        if (json)
        {
            output.WriteLine(JsonSerializer.Serialize(new GenerateResult(
                tokens,
                text.ToString(),
                statistics.PromptTokens,
                statistics.GeneratedTokens,
                Math.Round(statistics.PromptTokensPerSecond, 3),
                Math.Round(statistics.GenerationTokensPerSecond, 3),
                statistics.FinishReason.ToString().ToLowerInvariant()), CliJsonContext.Default.GenerateResult));
        }

        return Task.FromResult(0);
    }

    /// <summary>
    /// A model on CUDA sums its shards in GPU memory, which only the nccl backend reaches: chosen unless
    /// GRANARY_BACKEND (`granary launch --backend`) names a backend; null keeps the environment's choice.
    /// </summary>
    private static string? CollectiveBackendFor(CommandArguments arguments) =>
        string.Equals(arguments.Get("--backend"), "cuda", StringComparison.OrdinalIgnoreCase)
        && Environment.GetEnvironmentVariable(DistributedEnvironment.Backend) is null or "" or "auto"
            ? "nccl"
            : null;

    /// <summary>
    /// `generate --cluster`: the same generation through the client SDK on a Granary cluster (its coordinator encodes
    /// the prompt with the model's chat format), with the same text and --json output as a local run.
    /// </summary>
    private static async Task<int> RunOnClusterAsync(CommandArguments arguments, string? prompt, int[]? promptIds, bool json)
    {
        var model = ClusterConnection.ModelReference(arguments);
        var job = new Granary.Abstractions.GenerationJob
        {
            Prompt = promptIds is not null
                ? Granary.Abstractions.Prompt.FromTokenIds(promptIds)
                : Granary.Abstractions.Prompt.FromText(prompt!, arguments.Get("--system"), !arguments.Has("--ignore-chat-template")),
            MaxTokens = arguments.GetInt("--max-tokens", 256),
            Sampling = ClusterConnection.Sampling(arguments),
            StopStrings = [.. arguments.GetAll("--stop")],
            StopAtEndOfSequence = !arguments.Has("--no-eos"),
        };
        using var cancel = ConsoleCancellation.Create();
        await using var client = await ClusterConnection.ConnectAsync(arguments, cancel.Token);
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        Granary.Abstractions.GenerationSummary? summary = null;
        await foreach (var chunk in client.StreamAsync(model, job, cancel.Token))
        {
            if (chunk.HasToken)
            {
                tokens.Add(chunk.TokenId);
            }

            text.Append(chunk.Text);
            Console.Out.Write(chunk.Text);
            Console.Out.Flush();
            summary = chunk.Summary ?? summary;
        }

        Console.Out.WriteLine();
        if (summary is null)
        {
            throw new InvalidOperationException("The cluster's stream ended without its summary.");
        }

        Console.Error.WriteLine(
            $"Prompt: {summary.PromptTokens} tokens, {summary.PromptTokensPerSecond:F1} tokens/s; " +
            $"Generation: {summary.GeneratedTokens} tokens, {summary.GenerationTokensPerSecond:F1} tokens/s" +
            (summary.Failovers > 0 ? $"; {summary.Failovers} failover(s)" : ""));
        if (json)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(new GenerateResult(
                tokens,
                text.ToString(),
                summary.PromptTokens,
                summary.GeneratedTokens,
                Math.Round(summary.PromptTokensPerSecond, 3),
                Math.Round(summary.GenerationTokensPerSecond, 3),
                summary.FinishReason.ToString().ToLowerInvariant()), CliJsonContext.Default.GenerateResult));
        }

        return 0;
    }

    /// <summary>The prompt as the model expects it: through its chat format when it has one.</summary>
    internal static IReadOnlyList<int> Encode(ITextTokenizer tokenizer, string prompt, string? system, bool useChatTemplate)
    {
        if (!useChatTemplate || !tokenizer.HasChatTemplate)
        {
            return tokenizer.Encode(prompt, addSpecialTokens: true);
        }

        var messages = new List<ChatMessage>();
        if (system is not null)
        {
            messages.Add(new ChatMessage("system", system));
        }

        messages.Add(new ChatMessage("user", prompt));
        return tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false);
    }
}

internal sealed record GenerateResult(
    IReadOnlyList<int> Tokens,
    string Text,
    int PromptTokens,
    int GenerationTokens,
    double PromptTps,
    double GenerationTps,
    string FinishReason);
