namespace Granary.Runtime.Tests;

/// <summary>A test that needs PostgreSQL: skipped, saying so, unless GRANARY_TEST_POSTGRES holds a connection string.</summary>
public sealed class PostgresFactAttribute : FactAttribute
{
    public const string Variable = "GRANARY_TEST_POSTGRES";

    public PostgresFactAttribute()
    {
        if (string.IsNullOrEmpty(ConnectionString))
        {
            Skip = $"{Variable} is not set: PostgreSQL membership is not tested (.ci/run sets it).";
        }
    }

    public static string? ConnectionString => Environment.GetEnvironmentVariable(Variable);
}
