using Granary.Client.Postgres;

namespace Granary.Cli.Commands;

/// <summary>`granary db init`: puts Orleans' PostgreSQL membership schema into a database.</summary>
internal static class DbCommand
{
    public const string Summary = "db init --connection \"Host=...;Database=...;Username=...;Password=...\": create the membership schema";

    public static async Task<int> RunAsync(string[] args)
    {
        if (args is not ["init", .. var rest])
        {
            throw new UsageException("expected 'db init --connection \"Host=...;Database=...;Username=...;Password=...\" [--timeout SECONDS]'.");
        }

        var arguments = CommandArguments.Parse(rest, ["--connection", "--timeout"], []);
        var connection = arguments.Get("--connection") ?? throw new UsageException("--connection is required.");
        var timeout = arguments.GetInt("--timeout", 10);
        if (timeout < 1)
        {
            throw new UsageException($"--timeout must be at least 1 second, got {timeout}.");
        }

        using var cancel = ConsoleCancellation.Create();
        var report = await OrleansPostgresSchema.ApplyAsync(connection, TimeSpan.FromSeconds(timeout), cancel.Token);
        Console.Out.WriteLine($"Connected to PostgreSQL {report.ServerVersion}, database '{report.Database}'.");
        foreach (var step in report.Steps)
        {
            Console.Out.WriteLine(step.Applied
                ? $"  {step.Name}: applied {step.Script}"
                : $"  {step.Name}: already present, {step.Script} skipped");
        }

        Console.Out.WriteLine("The database is ready for Orleans membership (silos: --membership postgres --connection \"...\").");
        return 0;
    }
}
