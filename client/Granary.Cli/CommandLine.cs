using Granary.Cli.Commands;

namespace Granary.Cli;

/// <summary>Dispatches `granary COMMAND ...` to the command that handles it.</summary>
internal static class CommandLine
{
    private static readonly IReadOnlyDictionary<string, (string Summary, Func<string[], Task<int>> Run)> Commands =
        new Dictionary<string, (string, Func<string[], Task<int>>)>(StringComparer.Ordinal)
        {
            ["generate"] = (GenerateCommand.Summary, GenerateCommand.RunAsync),
            ["chat"] = (ChatCommand.Summary, ChatCommand.RunAsync),
            ["launch"] = (LaunchCommand.Summary, LaunchCommand.RunAsync),
            ["config"] = (ConfigCommand.Summary, ConfigCommand.RunAsync),
            ["collectives-check"] = (CollectivesCheckCommand.Summary, CollectivesCheckCommand.RunAsync),
            ["demo"] = (DemoCommand.Summary, DemoCommand.RunAsync),
            ["status"] = (Granary.Cli.Commands.StatusCommand.Summary, Granary.Cli.Commands.StatusCommand.RunAsync),
            ["db"] = (Granary.Cli.Commands.DbCommand.Summary, Granary.Cli.Commands.DbCommand.RunAsync),
            ["lora"] = (LoraCommand.Summary, LoraCommand.RunAsync),
            ["fuse"] = (FuseCommand.Summary, FuseCommand.RunAsync),
            ["serve"] = (ServeCommand.Summary, ServeCommand.RunAsync),
        };

    public static async Task<int> RunAsync(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            PrintUsage(Console.Out);
            return args.Length == 0 ? 2 : 0;
        }

        if (!Commands.TryGetValue(args[0], out var command))
        {
            Console.Error.WriteLine($"granary: unknown command '{args[0]}'.");
            PrintUsage(Console.Error);
            return 2;
        }

        try
        {
            return await command.Run(args[1..]);
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"granary {args[0]}: {e.Message}");
            return 2;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine($"granary {args[0]}: cancelled.");
            return 130;
        }
        catch (Exception e) when (Environment.GetEnvironmentVariable("GRANARY_DEBUG") is null)
        {
            // Users get the message, not a stack trace; GRANARY_DEBUG=1 shows the full exception.
            Console.Error.WriteLine($"granary {args[0]}: error: {e.Message}");
            return 1;
        }
    }

    private static void PrintUsage(TextWriter writer)
    {
        writer.WriteLine("usage: granary COMMAND [options]");
        writer.WriteLine();
        foreach (var (name, (summary, _)) in Commands)
        {
            writer.WriteLine($"  {name,-10} {summary}");
        }
    }
}

/// <summary>Bad command-line input; reported without a stack trace.</summary>
internal sealed class UsageException(string message) : Exception(message);
