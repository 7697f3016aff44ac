using System.Text;
using Granary.Models.Generation;
using Granary.Models.Tokenization;

namespace Granary.Cli.Commands;

/// <summary>`granary chat`: an interactive conversation that keeps its history.</summary>
internal static class ChatCommand
{
    public const string Summary = "chat with a model interactively (/reset clears history, /exit or Ctrl-D quits); --cluster chats through a Granary cluster";

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(
            args,
            [.. EngineOptions.ValueOptions, .. ClusterConnection.ValueOptions],
            [.. EngineOptions.FlagOptions, ClusterConnection.ClusterFlag, "--thinking"]);
        if (arguments.Has(ClusterConnection.ClusterFlag))
        {
            return ChatOnClusterAsync(arguments);
        }

        using var loaded = EngineOptions.LoadModel(arguments, Console.Error);
        var tokenizer = loaded.Tokenizer
            ?? throw new UsageException($"the model in '{loaded.Directory}' has no tokenizer.json, so it cannot chat.");
        if (!tokenizer.HasChatTemplate)
        {
            throw new UsageException($"the tokenizer in '{loaded.Directory}' has no chat template.");
        }

        var system = arguments.Get("--system");
        var maxTokens = arguments.GetInt("--max-tokens", 512);
        var sampling = EngineOptions.Sampling(arguments, loaded.Generation);
        var thinking = arguments.Has("--thinking");
        var generator = new TextGenerator(loaded.Model, tokenizer, EngineOptions.EndOfSequenceIds(loaded));
        var history = NewHistory(system);
        Console.Error.WriteLine("Type a message; /reset clears the history, /exit quits.");
        while (true)
        {
            Console.Out.Write(">> ");
            Console.Out.Flush();
            var line = Console.In.ReadLine();
            if (line is null || line.Trim() == "/exit")
            {
                return Task.FromResult(0);
            }

            if (line.Trim() == "/reset")
            {
                history = NewHistory(system);
                continue;
            }

            if (line.Trim().Length == 0)
            {
                continue;
            }

            history.Add(new ChatMessage("user", line));
            var prompt = tokenizer.Encode(tokenizer.ApplyChatTemplate(history, addGenerationPrompt: true, enableThinking: thinking));
            var request = new GenerationRequest
            {
                PromptIds = prompt,
                MaxTokens = maxTokens,
                Sampling = sampling,
                StopStrings = arguments.GetAll("--stop"),
            };
            var reply = new StringBuilder();
            var statistics = new GenerationStatistics();
            using (var cancel = ConsoleCancellation.Create())
            {
                try
                {
                    foreach (var token in generator.Generate(request, statistics, cancel.Token))
                    {
                        reply.Append(token.Text);
                        Console.Out.Write(token.Text);
                        Console.Out.Flush();
                    }
                }
                catch (OperationCanceledException)
                {
                    Console.Error.Write(" [interrupted]");
                }
            }

            Console.Out.WriteLine();
            if (arguments.Has("--verbose"))
            {
                Console.Error.WriteLine($"[{statistics.GeneratedTokens} tokens, {statistics.GenerationTokensPerSecond:F1} tokens/s]");
            }

            history.Add(new ChatMessage("assistant", reply.ToString()));
        }
    }

    /// <summary>
    /// `chat --cluster`: the same conversation through the client SDK; the cluster's coordinator renders the history
    /// with the model's chat format. A silo that dies mid-answer does not interrupt it.
    /// </summary>
    private static async Task<int> ChatOnClusterAsync(CommandArguments arguments)
    {
        if (arguments.Has("--thinking"))
        {
            throw new UsageException("--thinking does not apply with --cluster: the cluster renders the chat format with its defaults.");
        }

        var model = ClusterConnection.ModelReference(arguments);
        var system = arguments.Get("--system");
        var maxTokens = arguments.GetInt("--max-tokens", 512);
        var sampling = ClusterConnection.Sampling(arguments);
        using (var connecting = ConsoleCancellation.Create())
        {
            await using var client = await ClusterConnection.ConnectAsync(arguments, connecting.Token);
            Console.Error.WriteLine($"Loading {model} on the cluster...");
            var plan = await client.LoadModelAsync(model, connecting.Token);
            Console.Error.WriteLine($"Plan {plan.Version}: {plan.Layout} on {string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName))}.");
            var history = NewTurns(system);
            Console.Error.WriteLine("Type a message; /reset clears the history, /exit quits.");
            while (true)
            {
                Console.Out.Write(">> ");
                Console.Out.Flush();
                var line = Console.In.ReadLine();
                if (line is null || line.Trim() == "/exit")
                {
                    return 0;
                }

                if (line.Trim() == "/reset")
                {
                    history = NewTurns(system);
                    continue;
                }

                if (line.Trim().Length == 0)
                {
                    continue;
                }

                history.Add(new Granary.Abstractions.ChatTurn("user", line));
                var job = new Granary.Abstractions.GenerationJob
                {
                    Prompt = Granary.Abstractions.Prompt.FromChat(history),
                    MaxTokens = maxTokens,
                    Sampling = sampling,
                    StopStrings = [.. arguments.GetAll("--stop")],
                };
                var reply = new StringBuilder();
                Granary.Abstractions.GenerationSummary? summary = null;
                using (var cancel = ConsoleCancellation.Create())
                {
                    try
                    {
                        await foreach (var chunk in client.StreamAsync(model, job, cancel.Token))
                        {
                            reply.Append(chunk.Text);
                            Console.Out.Write(chunk.Text);
                            Console.Out.Flush();
                            summary = chunk.Summary ?? summary;
                        }
                    }
                    catch (OperationCanceledException)
                    {
                        Console.Error.Write(" [interrupted]");
                    }
                }

                Console.Out.WriteLine();
                if (arguments.Has("--verbose") && summary is not null)
                {
                    Console.Error.WriteLine($"[{summary.GeneratedTokens} tokens, {summary.GenerationTokensPerSecond:F1} tokens/s, {summary.Failovers} failover(s)]");
                }

                history.Add(new Granary.Abstractions.ChatTurn("assistant", reply.ToString()));
            }
        }
    }

    private static List<Granary.Abstractions.ChatTurn> NewTurns(string? system) =>
        system is null ? [] : [new Granary.Abstractions.ChatTurn("system", system)];

    private static List<ChatMessage> NewHistory(string? system) =>
        system is null ? [] : [new ChatMessage("system", system)];
}
