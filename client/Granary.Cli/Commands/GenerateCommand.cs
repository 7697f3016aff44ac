using System.Text.Json;
using Granary.Collectives;
using Granary.Models.Generation;
using Granary.Models.Tokenization;

namespace Granary.Cli.Commands;

/// <summary>`granary generate`: one completion for a prompt, streamed to stdout.</summary>
internal static class GenerateCommand
{
    public const string Summary = "generate text for a prompt (--prompt TEXT or --prompt-ids 1,2,3); under `granary launch`, one rank of a sharded model (--pipeline)";

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(
            args,
            [.. EngineOptions.ValueOptions, "--prompt", "--prompt-ids"],
            [.. EngineOptions.FlagOptions, "--json", "--ignore-chat-template", "--no-eos"]);
        var prompt = arguments.Get("--prompt");
        var promptIds = arguments.GetIntList("--prompt-ids");
        if ((prompt is null) == (promptIds is null))
        {
            throw new UsageException("give exactly one of --prompt TEXT or --prompt-ids 1,2,3.");
        }

        var json = arguments.Has("--json");

        // Under `granary launch` every rank runs this command on its share of the model; only rank 0 prints.
        using var world = CollectiveOptions.FromEnvironment() is null ? null : Group.Init();
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
