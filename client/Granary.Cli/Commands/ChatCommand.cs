using System.Text;
using Granary.Models.Generation;
using Granary.Models.Tokenization;

namespace Granary.Cli.Commands;

/// <summary>`granary chat`: an interactive conversation that keeps its history.</summary>
internal static class ChatCommand
{
    public const string Summary = "chat with a model interactively (/reset clears history, /exit or Ctrl-D quits)";

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(args, EngineOptions.ValueOptions, [.. EngineOptions.FlagOptions, "--thinking"]);
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

    private static List<ChatMessage> NewHistory(string? system) =>
        system is null ? [] : [new ChatMessage("system", system)];
}
