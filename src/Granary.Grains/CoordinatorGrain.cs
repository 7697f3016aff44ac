using System.Runtime.CompilerServices;
using System.Threading.Channels;
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
/// leader. A split model loads in two steps: every shard binds a data-plane listener and reports its endpoint, then
/// every shard gets the plan's peer table, forms the collective group and maps its part. Its generations run in lock
/// step: the followers are started first, then the leader drives them over the data plane. When a shard's silo fails
/// mid-stream (for a split model, every surviving shard's group fails within the data-plane timeout), it re-plans over
/// the silos that still answer and resumes from the tokens already sent, so the caller sees one uninterrupted answer.
/// It is placed on the silo the first call arrives at (a client's gateway), so a client that connects to a silo it
/// trusts keeps its coordinator there.
/// </summary>
[Reentrant]
[PreferLocalPlacement]
internal sealed partial class CoordinatorGrain(
    IClusterMembershipService membership,
    ILocalSiloDetails localSilo,
    IOptions<CoordinatorOptions> options,
    ILogger<CoordinatorGrain> logger) : Grain, ICoordinatorGrain
{
    private readonly SemaphoreSlim _planning = new(1, 1);
    private readonly CoordinatorOptions _options = options.Value;
    private ModelPlan? _plan;
    private int _lastVersion;

    // The silos that were active when the current plan was made: a plan narrower than preferred widens once more join.
    private HashSet<string> _plannedOver = new(StringComparer.Ordinal);

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
            var chunks = Channel.CreateUnbounded<TokenChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
            using var stopLeader = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            Task? pump = null;
            try
            {
                try
                {
                    promptIds ??= await leader.EncodePromptAsync(job.Prompt);
                    var stream = leader.GenerateAsync(new ShardGenerationRequest(job, promptIds, [.. produced]), stopLeader.Token)
                        .GetAsyncEnumerator(stopLeader.Token);
                    pump = PumpAsync(stream, chunks.Writer);
                }
                catch (Exception e) when (IsShardFailure(e, cancellationToken))
                {
                    failure = e;
                }

                while (pump is not null && failure is null)
                {
                    TokenChunk? chunk;
                    try
                    {
                        if (!await chunks.Reader.WaitToReadAsync(cancellationToken))
                        {
                            yield break;
                        }

                        if (!chunks.Reader.TryRead(out chunk))
                        {
                            continue;
                        }
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
                // A caller that stops early (cancels or disposes the stream) stops the leader too.
                await stopLeader.CancelAsync();
                if (pump is not null)
                {
                    await pump;
                }
            }

            if (++failovers - job.PriorFailovers > _options.MaxFailovers)
            {
                throw new InvalidOperationException(
                    $"Generation {job.JobId} of model '{Model}' failed {failovers} times; giving up: {failure!.Message}", failure);
            }

            LogFailover(logger, job.JobId, Model, string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName)), produced.Count, failure!);
            plan = await ReplanAfterFailureAsync(plan, failure!, cancellationToken);
        }
    }

    public async IAsyncEnumerable<TrainingProgress> TrainAsync(TrainingJob job, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        job.Validate();
        for (var restarts = 0; ; restarts++)
        {
            var (silos, group) = await FormTrainingGroupAsync(cancellationToken);
            var streams = silos
                .Select((silo, rank) => GrainFactory.GetGrain<ITrainerGrain>(TrainerGrain.KeyOf(silo, Model)).TrainAsync(rank, group, job, resume: job.Resume || restarts > 0, cancellationToken))
                .ToList();
            // Rank 0 reports; the other ranks' streams are drained so that their failures are seen too.
            var followers = Task.WhenAll(streams.Skip(1).Select(async stream =>
            {
                await foreach (var _ in stream.WithCancellation(cancellationToken))
                {
                }
            }));
            var reports = streams[0].GetAsyncEnumerator(cancellationToken);
            Exception? failure = null;
            try
            {
                while (true)
                {
                    try
                    {
                        if (!await reports.MoveNextAsync())
                        {
                            await followers;
                            break;
                        }
                    }
                    catch (Exception e) when (IsShardFailure(e, cancellationToken))
                    {
                        failure = e;
                        break;
                    }

                    yield return reports.Current with { Silos = silos, Restarts = job.PriorRestarts + restarts };
                }
            }
            finally
            {
                await DisposeQuietlyAsync(reports);
                if (failure is not null)
                {
                    // The survivors' groups fail too, within the data-plane timeout; their errors are expected now.
                    try
                    {
                        await followers;
                    }
                    catch (Exception e) when (IsShardFailure(e, cancellationToken))
                    {
                        LogTrainingRankFailed(logger, Model, e.Message);
                    }
                }
            }

            if (failure is null)
            {
                yield break;
            }

            if (restarts >= _options.MaxFailovers)
            {
                throw new InvalidOperationException($"Training of model '{Model}' failed {restarts + 1} times; giving up: {failure.Message}", failure);
            }

            LogTrainingRestart(logger, Model, string.Join(", ", silos), failure);
            await Task.Delay(_options.FailoverRetryDelay, cancellationToken);
        }
    }

    /// <summary>
    /// The silos that answer and can hold the whole model (up to <see cref="CoordinatorOptions.MaxShards"/>), each with
    /// a data-plane listener bound for a new session, retried until <see cref="CoordinatorOptions.FailoverTimeout"/>
    /// while a dead silo is still listed as active.
    /// </summary>
    private async Task<(string[] Silos, ShardGroup Group)> FormTrainingGroupAsync(CancellationToken cancellationToken)
    {
        var deadline = DateTime.UtcNow + _options.FailoverTimeout;
        while (true)
        {
            try
            {
                var answers = await Task.WhenAll(ActiveSiloNames().Select(name => ProbeAsync(name, cancellationToken)));
                var silos = answers
                    .Select(answer => answer.Probe)
                    .Where(probe => probe.Found && probe.AvailableBytes >= probe.RequiredBytes && probe.Backend == "cpu")
                    .Select(probe => probe.SiloName)
                    .Order(StringComparer.Ordinal)
                    .Take(_options.MaxShards)
                    .ToArray();
                if (silos.Length == 0)
                {
                    throw new InsufficientClusterCapacityException(
                        $"No live silo on the cpu backend can hold model '{Model}' for training: " +
                        string.Join("; ", answers.Select(answer => $"{answer.Probe.SiloName}: {answer.Probe.Problem ?? $"offers {answer.Probe.AvailableBytes} of {answer.Probe.RequiredBytes} bytes on {answer.Probe.Backend}"}")) + ".");
                }

                var session = Guid.NewGuid();
                var endpoints = await Task.WhenAll(silos.Select(silo =>
                    GrainFactory.GetGrain<ITrainerGrain>(TrainerGrain.KeyOf(silo, Model)).OpenDataPlaneAsync(session).WaitAsync(_options.ProbeTimeout, cancellationToken)));
                return (silos, new ShardGroup(session, endpoints, _options.DataPlaneBackend, _options.DataPlaneTimeout, _options.GroupFormationTimeout));
            }
            catch (Exception e) when ((IsShardFailure(e, cancellationToken) || e is InsufficientClusterCapacityException) && DateTime.UtcNow < deadline)
            {
                LogReplanRetry(logger, Model, e.Message);
                await Task.Delay(_options.FailoverRetryDelay, cancellationToken);
            }
        }
    }

    /// <summary>
    /// Re-plans over the silos that still answer. The silo of a whole model that could not be reached is left out at
    /// once; a split model's failure does not say which of its silos is gone, so the probes find out (a dead silo
    /// refuses them). Until membership has declared a silo dead, calls routed through it (directory lookups, probes) may fail
    /// too, so failed attempts are retried until <see cref="CoordinatorOptions.FailoverTimeout"/>; then the last error
    /// (e.g. the survivors cannot hold the model) goes to the caller.
    /// </summary>
    private async Task<ModelPlan> ReplanAfterFailureAsync(ModelPlan failed, Exception failure, CancellationToken cancellationToken)
    {
        var failedSilo = failed.ShardCount == 1 && failure is not ShardGroupException ? failed.Leader.Shard.SiloName : null;
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
        if (_plan is { } plan && IsAlive(plan) && !CanWiden(plan))
        {
            return plan;
        }

        return await ReplanAsync(_plan, failedSilo: null, cancellationToken);
    }

    /// <summary>A split narrower than preferred (made while silos were missing) is re-planned once new silos are active.</summary>
    private bool CanWiden(ModelPlan plan) =>
        _options.Layout is ShardLayout.Tensor or ShardLayout.Pipeline
        && plan.ShardCount < _options.MaxShards
        && ActiveSiloNames().Any(name => !_plannedOver.Contains(name));

    /// <summary>Plans over the active silos except <paramref name="failedSilo"/>, unless another caller already replaced <paramref name="stale"/>.</summary>
    private async Task<ModelPlan> ReplanAsync(ModelPlan? stale, string? failedSilo, CancellationToken cancellationToken)
    {
        await _planning.WaitAsync(cancellationToken);
        try
        {
            if (_plan is { } current && !ReferenceEquals(current, stale) && IsAlive(current) && !CanWiden(current))
            {
                return current;
            }

            var silos = ActiveSiloNames().Where(name => name != failedSilo).ToList();
            var answers = await Task.WhenAll(silos.Select(name => ProbeAsync(name, cancellationToken)));
            var probes = answers.Select(answer => answer.Probe).ToList();
            // A silo that did not answer (dead, but not declared dead yet) counts as new when it is active again.
            var answered = answers.Where(answer => answer.Answered).Select(answer => answer.Probe.SiloName).ToHashSet(StringComparer.Ordinal);
            _lastVersion = Math.Max(_lastVersion, _plan?.Version ?? 0) + 1;
            var plan = LayoutPlanner.Plan(Model, _lastVersion, probes, DateTimeOffset.UtcNow, _options.Layout, _options.MaxShards)
                with { CoordinatorSilo = localSilo.Name };
            plan = plan.ShardCount == 1 ? await LoadWholeAsync(plan, cancellationToken) : await LoadSplitAsync(plan, cancellationToken);
            var previous = _plan;
            _plan = plan;
            _plannedOver = answered;
            LogPlanned(logger, Model, plan.Version, plan.Layout, string.Join(", ", plan.Shards.Select(shard => shard.Shard.SiloName)));
            if (previous is not null)
            {
                var kept = plan.Shards.Select(shard => shard.Shard).ToHashSet();
                // In the background: a silo that died without being declared dead yet would hold the resumed stream up.
                _ = ReleaseAsync([.. previous.Shards.Where(shard => !kept.Contains(shard.Shard) && shard.Shard.SiloName != failedSilo)]);
            }

            return plan;
        }
        finally
        {
            _planning.Release();
        }
    }

    private async Task<ModelPlan> LoadWholeAsync(ModelPlan plan, CancellationToken cancellationToken)
    {
        await GrainFactory.GetGrain<IShardGrain>(plan.Leader.Shard.ToGrainKey()).LoadAsync(plan.Leader, cancellationToken);
        return plan;
    }

    /// <summary>
    /// Every shard binds its data-plane listener and reports the endpoint; every shard then gets the whole peer table
    /// of this plan version, forms the group and loads its part. A shard that fails makes the others fail to form the
    /// group within <see cref="CoordinatorOptions.GroupFormationTimeout"/>; what did load is released again. Once all
    /// have loaded, the leader starts its batching engine and the others follow it.
    /// </summary>
    private async Task<ModelPlan> LoadSplitAsync(ModelPlan plan, CancellationToken cancellationToken)
    {
        try
        {
            var endpoints = await Task.WhenAll(plan.Shards.Select(shard =>
                GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).OpenDataPlaneAsync(shard).WaitAsync(_options.ProbeTimeout, cancellationToken)));
            var group = new ShardGroup(Guid.NewGuid(), endpoints, _options.DataPlaneBackend, _options.DataPlaneTimeout, _options.GroupFormationTimeout);
            plan = plan with { Group = group };
            await Task.WhenAll(plan.Shards.Select(shard =>
                GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).LoadInGroupAsync(shard, group, cancellationToken)));

            // Only now that every shard holds its weights: the followers then wait on a leader that serves at once.
            await Task.WhenAll(plan.Shards.Select(shard =>
                GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).StartServingAsync(plan.Version).WaitAsync(_options.ProbeTimeout, cancellationToken)));
            return plan;
        }
        catch
        {
            var current = _plan?.Shards.Select(shard => shard.Shard).ToHashSet() ?? [];
            _ = ReleaseAsync([.. plan.Shards.Where(shard => !current.Contains(shard.Shard))]);
            throw;
        }
    }

    private async Task<(ModelProbe Probe, bool Answered)> ProbeAsync(string siloName, CancellationToken cancellationToken)
    {
        try
        {
            return (await GrainFactory.GetGrain<IHostAgentGrain>(siloName).ProbeModelAsync(Model).WaitAsync(_options.ProbeTimeout, cancellationToken), true);
        }
        catch (Exception e) when (!cancellationToken.IsCancellationRequested)
        {
            return (new ModelProbe(siloName, false, "", 0, 0, 0, "", 0, $"did not answer: {e.Message}"), false);
        }
    }

    /// <summary>Unloading is best effort: a silo that is gone has nothing left to free.</summary>
    private Task ReleaseAsync(IEnumerable<ShardAssignment> shards) => Task.WhenAll(shards.Select(async shard =>
    {
        try
        {
            await GrainFactory.GetGrain<IShardGrain>(shard.Shard.ToGrainKey()).UnloadAsync().WaitAsync(_options.ProbeTimeout);
        }
        catch (Exception e)
        {
            LogUnloadFailed(logger, shard.Shard.ToGrainKey(), e);
        }
    }));

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
            or EnumerationAbortedException or ShardNotLoadedException or SiloNotInClusterException or TimeoutException
            or ShardGroupException;

    private static async Task PumpAsync(IAsyncEnumerator<TokenChunk> stream, ChannelWriter<TokenChunk> writer)
    {
        try
        {
            while (await stream.MoveNextAsync())
            {
                writer.TryWrite(stream.Current);
            }

            writer.TryComplete();
        }
        catch (Exception e)
        {
            writer.TryComplete(e);
        }
        finally
        {
            await DisposeQuietlyAsync(stream);
        }
    }

    private static async Task DisposeQuietlyAsync<T>(IAsyncEnumerator<T> stream)
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

    [LoggerMessage(Level = LogLevel.Information, Message = "Model {Model} plan {Version} ({Layout}): shards on {Silos}")]
    private static partial void LogPlanned(ILogger logger, string model, int version, string layout, string silos);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Generation {JobId} of {Model} lost a shard of its plan on {Silos} after {Tokens} tokens; re-planning")]
    private static partial void LogFailover(ILogger logger, string jobId, string model, string silos, int tokens, Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Training of {Model} on {Silos} lost a rank; resuming on the survivors from the last checkpoint")]
    private static partial void LogTrainingRestart(ILogger logger, string model, string silos, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "A surviving training rank of {Model} ended with its group: {Reason}")]
    private static partial void LogTrainingRankFailed(ILogger logger, string model, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Re-planning {Model} failed, retrying: {Reason}")]
    private static partial void LogReplanRetry(ILogger logger, string model, string reason);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Could not unload shard {Shard}")]
    private static partial void LogUnloadFailed(ILogger logger, string shard, Exception exception);
}
