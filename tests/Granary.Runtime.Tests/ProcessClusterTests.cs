using Granary.Abstractions;
using Granary.Client;
using Granary.Client.Postgres;

namespace Granary.Runtime.Tests;

/// <summary>Real silo processes on loopback, reached through the client SDK.</summary>
public sealed class ProcessClusterTests
{
    private static readonly TimeSpan StartTimeout = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Two_silo_processes_with_localhost_membership_stream_the_engines_greedy_tokens()
    {
        var clusterId = $"test-{Guid.NewGuid():N}";
        var ports = SiloProcess.FreePorts(4);
        var primary = $"127.0.0.1:{ports[0]}";
        string[] common = ["--cluster-id", clusterId, "--membership", "localhost", "--primary-silo", primary];
        using var first = await SiloProcess.StartAsync("alpha", ports[0], ports[1], common, StartTimeout);
        using var second = await SiloProcess.StartAsync("beta", ports[2], ports[3], common, StartTimeout);
        await using var client = await GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = clusterId;
            options.Gateways = [first.Gateway, second.Gateway];
        });

        await RunModelAsync(client, ["alpha", "beta"], first, second);

        // SIGTERM shuts a silo down gracefully: it exits cleanly and leaves the membership as dead at once.
        Assert.Equal(0, await second.TerminateAsync(TimeSpan.FromSeconds(45)));
        var status = await client.StatusAsync();
        Assert.Equal("Dead", Assert.Single(status.Silos, silo => silo.SiloName == "beta").Status);
    }

    [PostgresFact]
    public async Task Two_silo_processes_with_postgres_membership_stream_the_engines_greedy_tokens()
    {
        var connection = PostgresFactAttribute.ConnectionString!;
        var report = await OrleansPostgresSchema.ApplyAsync(connection, TimeSpan.FromSeconds(10));
        Assert.Equal(["main", "clustering"], report.Steps.Select(step => step.Name));
        var again = await OrleansPostgresSchema.ApplyAsync(connection, TimeSpan.FromSeconds(10));
        Assert.All(again.Steps, step => Assert.False(step.Applied));

        var clusterId = $"test-{Guid.NewGuid():N}";
        var ports = SiloProcess.FreePorts(4);
        // These silos split models tensor parallel: the shards' data-plane endpoints go through grains whose silos
        // found each other in PostgreSQL.
        string[] common = ["--cluster-id", clusterId, "--membership", "postgres", "--connection", connection, "--layout", "Tensor"];
        using var first = await SiloProcess.StartAsync("pg-alpha", ports[0], ports[1], common, StartTimeout);
        using var second = await SiloProcess.StartAsync("pg-beta", ports[2], ports[3], common, StartTimeout);
        await using var client = await GranaryClient.ConnectAsync(options =>
        {
            options.ClusterId = clusterId;
            options.Membership = GranaryClientOptions.Postgres;
            options.ConnectionString = connection;
        });

        await RunModelAsync(client, ["pg-alpha", "pg-beta"], first, second, split: true);
    }

    [Fact]
    public async Task Db_init_reports_an_unreachable_server_within_its_timeout()
    {
        var port = SiloProcess.FreePorts(1)[0];
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<PostgresUnreachableException>(() => OrleansPostgresSchema.ApplyAsync(
            $"Host=127.0.0.1;Port={port};Database=granary;Username=granary;Password=x", TimeSpan.FromSeconds(3)));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"Took {clock.Elapsed}.");
        Assert.Contains($"127.0.0.1:{port}", error.Message, StringComparison.Ordinal);
    }

    private static async Task RunModelAsync(GranaryClient client, string[] siloNames, SiloProcess first, SiloProcess second, bool split = false)
    {
        var status = await WaitForActiveSilosAsync(client, siloNames.Length, TimeSpan.FromSeconds(60), first, second);
        Assert.Equal(siloNames, status.Silos.Select(silo => silo.SiloName));

        var plan = await client.LoadModelAsync(TinyModel.Directory);
        Assert.Contains(plan.Leader.Shard.SiloName, siloNames);
        var result = await client.GenerateAsync(TinyModel.Directory, new GenerationJob
        {
            Prompt = Prompt.FromTokenIds(TinyModel.PromptIds),
            MaxTokens = 20,
            Sampling = SamplingSettings.Greedy,
            StopAtEndOfSequence = false,
        });
        Assert.Equal(TinyModel.GenerateInProcess(TinyModel.PromptIds, 20), result.Tokens);
        Assert.Equal(TinyModel.GreedyTokens, result.Tokens);
        Assert.Equal((TinyModel.PromptIds.Length, 20), (result.Summary.PromptTokens, result.Summary.GeneratedTokens));

        var loaded = await client.StatusAsync();
        if (split)
        {
            Assert.Equal(("tensor", 2), (plan.Layout, plan.ShardCount));
            Assert.All(loaded.Silos, silo => Assert.Single(silo.Host!.Shards));
        }
        else
        {
            var holder = Assert.Single(loaded.Silos, silo => silo.Host!.Shards.Length > 0);
            Assert.Equal(plan.Leader.Shard.SiloName, holder.SiloName);
        }

        Assert.Equal(plan.Version, Assert.Single(loaded.Models).Version);
    }

    private static async Task<ClusterStatus> WaitForActiveSilosAsync(GranaryClient client, int count, TimeSpan timeout, params SiloProcess[] silos)
    {
        using var deadline = new CancellationTokenSource(timeout);
        while (true)
        {
            var status = await client.StatusAsync(deadline.Token);
            if (status.Silos.Count(silo => silo.Status == "Active" && silo.Host is not null) == count)
            {
                return status;
            }

            if (deadline.IsCancellationRequested)
            {
                throw new TimeoutException($"{count} active silos expected; status: {string.Join(", ", status.Silos.Select(s => $"{s.SiloName}={s.Status}"))}\n" +
                    string.Join("\n", silos.Select(silo => $"--- {silo.Name}\n{silo.Output}")));
            }

            await Task.Delay(TimeSpan.FromMilliseconds(500), CancellationToken.None);
        }
    }
}
