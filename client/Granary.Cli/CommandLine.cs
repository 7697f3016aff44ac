namespace Granary.Cli;

/// <summary>Dispatches `granary COMMAND ...` to the command that handles it.</summary>
internal static class CommandLine
{
    private static readonly IReadOnlyDictionary<string, (string Summary, Func<string[], Task<int>> Run)> Commands =
        new Dictionary<string, (string, Func<string[], Task<int>>)>(StringComparer.Ordinal)
        {
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
