using System.Runtime.CompilerServices;
using Granary.Abstractions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Concurrency;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Messaging;

namespace Granary.Grains;

/// <summary>
/// Plans a model's layout over the live silos, has its shards load, and streams generations from the plan's
/// leader. When a shard's silo fails mid-stream, it re-plans without that silo and resumes from the tokens
/// already sent, so the caller sees one uninterrupted answer. It is placed on the silo the first call arrives at
/// (a client's gateway), so a client that connects to a silo it trusts keeps its coordinator there.
/// </summary>
[Reentrant]
[PreferLocalPlacement]
internal sealed partial class CoordinatorGrain(
    IClusterMembershipService membership,
    IOptions<CoordinatorOptions> options,
    ILogger<CoordinatorGrain> logger) : Grain, ICoordinatorGrain
{
    private readonly SemaphoreSlim _planning = new(1, 1);
    private readonly CoordinatorOptions _options = options.Value;
    private ModelPlan? _plan;

    private string Model => this.GetPrimaryKeyString();

    public Task<ModelPlan> LoadAsync(CancellationToken cancellationToken) => EnsurePlanAsync(cancellationToken);

    public Task<ModelPlan?> GetPlanAsync() => Task.FromResult(_plan);

    public async IAsyncEnumerable<TokenChunk> GenerateAsync(
        GenerationJob job,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        job.Prompt.Validate();
        if (job.JobId.Length == 0)
        {
            job = job with { JobId = Guid.NewGuid().ToString("N")[..12] };
        }

        var plan = await EnsurePlanAsync(cancellationToken);
        int[]? promptIds = null;
        var produced = new List<int>(job.ProducedTokenIds);
        var failovers = job.PriorFailovers;
        while (true)
        {
            var leader = GrainFactory.GetGrain<IShardGrain>(plan.Leader.Shard.ToGrainKey());
            Exception? failure = null;
            IAsyncEnumerator<TokenChunk>? stream = null;
            try
            {
                try
                {
                    promptIds ??= await leader.EncodePromptAsync(job.Prompt);
                    stream = leader.GenerateAsync(new ShardGenerationRequest(job, promptIds, [.. produced]), cancellationToken)
                        .GetAsyncEnumerator(cancellationToken);
                }
                catch (Exception e) when (IsShardFailure(e, cancellationToken))
                {
                    failure = e;
                }

                while (stream is not null && failure is null)
                {
                    TokenChunk chunk;
                    try
                    {
                        if (!await stream.MoveNextAsync())
                        {
                            yield break;
                        }

                        chunk = stream.Current;
                    }
                    catch (Exception e) when (IsShardFailure(e, cancellationToken))
                    {
                        failure = e;
                        break;
                    }

                    if (chunk.HasToken)
                    {
                        produced.Add(chunk.TokenId);
                    }

                    yield return chunk.Summary is null ? chunk : chunk with { Summary = chunk.Summary with { Failovers = failovers } };
                }
            }
            finally
            {
                if (stream is not null)
                {
                    await DisposeQuietlyAsync(stream);
                }
            }

            if (++failovers - job.PriorFailovers > _options.MaxFailovers)
            {
                throw new InvalidOperationException(
                    $"Generation {job.JobId} of model '{Model}' failed {failovers} times; giving up: {failure!.Message}", failure);
            }

            LogFailover(logger, job.JobId, Model, plan.Leader.Shard.SiloName, produced.Count, failure!);
            plan = await ReplanAfterFailureAsync(plan, cancellationToken);
        }
    }

    /// <summary>
    /// Re-plans without the failed silo. Until membership has declared that silo dead, calls routed through it
    /// (directory lookups, probes) fail too, so failed attempts are retried until <see cref="CoordinatorOptions.FailoverTimeout"/>;
    /// then the last error (e.g. the survivors cannot hold the model) goes to the caller.
    /// </summary>
    private async Task<ModelPlan> ReplanAfterFailureAsync(ModelPlan failed, CancellationToken cancellationToken)
    {
        var failedSilo = failed.Leader.Shard.SiloName;
        var deadline = DateTime.UtcNow + _options.FailoverTimeout;
        while (true)
        {
            try
            {
                return await ReplanAsync(failed, failedSilo, cancellationToken);
            }
            catch (Exception e) when ((IsShardFailure(e, cancellationToken) || e is InsufficientClusterCapacityException) && DateTime.UtcNow < deadline)
            {
                LogReplanRetry(logger, Model, e.Message);
                await Task.Delay(_options.FailoverRetryDelay, cancellationToken);
            }
        }
    }

    public async Task UnloadAsync()
    {
        await _planning.WaitAsync();
        try
        {
            if (_plan is { } plan)
            {
                _plan = null;
                await ReleaseAsync(plan.Shards);
            }
        }
        finally
        {
            _planning.Release();
        }
    }

    private async Task<ModelPlan> EnsurePlanAsync(CancellationToken cancellationToken)
    {
        if (_plan is { } plan && IsAlive(plan))
        {
            return plan;
        }

        return await ReplanAsync(_plan, failedSilo: null, cancellationToken);
    }

    /// <summary>Plans over the active silos except <paramref name="failedSilo"/>, unless another caller already replaced <paramref name="stale"/>.</summary>
    private async Task<ModelPlan> ReplanAsync(ModelPlan? stale, string? failedSilo, CancellationToken cancellationToken)
    {
        await _planning.WaitAsync(cancellationToken);
        try
        {
            if (_plan is { } current && !ReferenceEquals(current, stale) && IsAlive(current))
            {
                return current;
            }

            var silos = ActiveSiloNames().Where(name => name != failedSilo).ToList();
            var probes = await Task.WhenAll(silos.Select(name => ProbeAsync(name, cancellationToken)));
            var plan = LayoutPlanner.Plan(Model, (_plan?.Version ?? 0) + 1, probes, DateTimeOffset.UtcNow);
            await Task.WhenAll(plan.Shards.Select(shard =>
                GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).LoadAsync(shard, cancellationToken)));
            var previous = _plan;
            _plan = plan;
            LogPlanned(logger, Model, plan.Version, string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName)));
            if (previous is not null)
            {
                var kept = plan.Shards.Select(shard => shard.Shard).ToHashSet();
                await ReleaseAsync(previous.Shards.Where(shard => !kept.Contains(shard.Shard) && shard.Shard.SiloName != failedSilo));
            }

            return plan;
        }
        finally
        {
            _planning.Release();
        }
    }

    private async Task<ModelProbe> ProbeAsync(string siloName, CancellationToken cancellationToken)
    {
        try
        {
            return await GrainFactory.GetGrain<IHostAgentGrain>(siloName).ProbeModelAsync(Model)
                .WaitAsync(_options.ProbeTimeout, cancellationToken);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            return new ModelProbe(siloName, false, "", 0, 0, 0, "", 0, $"did not answer: {e.Message}");
        }
    }

    /// <summary>Unloading is best effort: a silo that is gone has nothing left to free.</summary>
    private async Task ReleaseAsync(IEnumerable<ShardAssignment> shards)
    {
        foreach (var shard in shards)
        {
            try
            {
                await GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).UnloadAsync().WaitAsync(_options.ProbeTimeout);
            }
            catch (Exception e)
            {
                LogUnloadFailed(logger, shard.Shard.ToGrainKey(), e);
            }
        }
    }

    private IEnumerable<string> ActiveSiloNames() =>
        membership.CurrentSnapshot.Members.Values
            .Where(member => member.Status == SiloStatus.Active)
            .Select(member => member.Name)
            .Order(StringComparer.Ordinal);

    private bool IsAlive(ModelPlan plan)
    {
        var active = ActiveSiloNames().ToHashSet(StringComparer.Ordinal);
        return plan.Shards.All(shard => active.Contains(shard.Shard.SiloName));
    }

    /// <summary>Failures that mean the shard or its silo is gone (as opposed to a bad request), so re-planning can help.</summary>
    private static bool IsShardFailure(Exception e, CancellationToken cancellationToken) =>
        !cancellationToken.IsCancellationRequested
        && e is SiloUnavailableException or OrleansMessageRejectionException or ConnectionFailedException
            or EnumerationAbortedException or ShardNotLoadedException or SiloNotInClusterException or TimeoutException;

    private static async Task DisposeQuietlyAsync(IAsyncEnumerator<TokenChunk> stream)
    {
        try
        {
            await stream.DisposeAsync();
        }
        catch (Exception e) when (e is OrleansException or TimeoutException or OperationCanceledException)
        {
            // The shard's silo may be gone; there is nothing left to close.
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Model {Model} plan {Version}: shards on {Silos}")]
    private static partial void LogPlanned(ILogger logger, string model, int version, string silos);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Generation {JobId} of {Model} lost its shard on silo {Silo} after {Tokens} tokens; re-planning")]
    private static partial void LogFailover(ILogger logger, string jobId, string model, string silo, int tokens, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Re-planning {Model} failed, retrying: {Reason}")]
    private static partial void LogReplanRetry(ILogger logger, string model, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Could not unload shard {Shard}")]
    private static partial void LogUnloadFailed(ILogger logger, string shard, Exception exception);
}
