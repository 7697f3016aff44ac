using Npgsql;

namespace Granary.Client.Postgres;

/// <summary>
/// Puts Orleans' PostgreSQL membership schema (the main script, then the clustering script) into a database.
/// Idempotent: a script whose table is already there is skipped; each script runs in one transaction under an
/// advisory lock, so concurrent runs and failures never leave half a schema.
/// </summary>
public static class OrleansPostgresSchema
{
    // Any constant shared by every `granary db init`: serializes concurrent runs against one database.
    private const long AdvisoryLockKey = 0x6772616E617279;

    private static readonly (string Name, string Table, string Resource)[] Scripts =
    [
        ("main", "orleansquery", "PostgreSQL-Main.sql"),
        ("clustering", "orleansmembershiptable", "PostgreSQL-Clustering.sql"),
    ];

    /// <summary>Opens the database, failing with <see cref="PostgresUnreachableException"/> after <paramref name="connectTimeout"/>.</summary>
    public static async Task<NpgsqlConnection> ConnectAsync(string connectionString, TimeSpan connectTimeout, CancellationToken cancellationToken)
    {
        NpgsqlConnectionStringBuilder builder;
        try
        {
            builder = new NpgsqlConnectionStringBuilder(connectionString)
            {
                Timeout = Math.Max(1, (int)Math.Ceiling(connectTimeout.TotalSeconds)),
            };
        }
        catch (ArgumentException e)
        {
            throw new ArgumentException($"The connection string is not valid: {e.Message}", nameof(connectionString), e);
        }

        var connection = new NpgsqlConnection(builder.ConnectionString);
        try
        {
            await connection.OpenAsync(cancellationToken).WaitAsync(connectTimeout, cancellationToken);
            return connection;
        }
        catch (Exception e) when (e is NpgsqlException or TimeoutException or System.Net.Sockets.SocketException)
        {
            await connection.DisposeAsync();
            throw new PostgresUnreachableException(
                $"Cannot reach PostgreSQL database '{builder.Database}' at {builder.Host}:{builder.Port} as '{builder.Username}' " +
                $"within {connectTimeout.TotalSeconds:F0} s: {e.Message}",
                e);
        }
    }

    public static async Task<SchemaReport> ApplyAsync(string connectionString, TimeSpan connectTimeout, CancellationToken cancellationToken = default)
    {
        await using var connection = await ConnectAsync(connectionString, connectTimeout, cancellationToken);
        var steps = new List<SchemaStep>();
        foreach (var (name, table, resource) in Scripts)
        {
            await using var transaction = await connection.BeginTransactionAsync(cancellationToken);
            await ExecuteAsync(connection, transaction, $"SELECT pg_advisory_xact_lock({AdvisoryLockKey})", cancellationToken);
            if (await TableExistsAsync(connection, transaction, table, cancellationToken))
            {
                steps.Add(new SchemaStep(name, resource, Applied: false));
                await transaction.RollbackAsync(cancellationToken);
                continue;
            }

            await ExecuteAsync(connection, transaction, ReadScript(resource), cancellationToken);
            await transaction.CommitAsync(cancellationToken);
            steps.Add(new SchemaStep(name, resource, Applied: true));
        }

        return new SchemaReport(connection.PostgreSqlVersion.ToString(), connection.Database, steps);
    }

    private static async Task<bool> TableExistsAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string table, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand("SELECT to_regclass(@table) IS NOT NULL", connection, transaction);
        command.Parameters.AddWithValue("table", table);
        return (bool)(await command.ExecuteScalarAsync(cancellationToken))!;
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, NpgsqlTransaction transaction, string sql, CancellationToken cancellationToken)
    {
        await using var command = new NpgsqlCommand(sql, connection, transaction);
        await command.ExecuteNonQueryAsync(cancellationToken);
    }

    private static string ReadScript(string resource)
    {
        using var stream = typeof(OrleansPostgresSchema).Assembly.GetManifestResourceStream($"Granary.Client.Postgres.{resource}")
            ?? throw new InvalidOperationException($"The schema script {resource} is missing from {typeof(OrleansPostgresSchema).Assembly.GetName().Name}.");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}

/// <summary>What <see cref="OrleansPostgresSchema.ApplyAsync"/> did.</summary>
public sealed record SchemaReport(string ServerVersion, string Database, IReadOnlyList<SchemaStep> Steps);

/// <param name="Applied">True when the script ran now; false when its tables were already there.</param>
public sealed record SchemaStep(string Name, string Script, bool Applied);

public sealed class PostgresUnreachableException(string message, Exception inner) : Exception(message, inner);
