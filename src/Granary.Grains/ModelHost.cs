using System.Collections.Concurrent;
using System.Diagnostics;
using Granary.Abstractions;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;
using Granary.Training;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Granary.Grains;

/// <summary>
/// The silo-local owner of model weights: one compute backend and the shards loaded on it. A singleton service,
/// not grain state, so a shard grain that is deactivated and reactivated finds its weights still loaded.
/// </summary>
public sealed partial class ModelHost : IDisposable
{
    private readonly ModelHostOptions _options;
    private readonly ILogger<ModelHost> _logger;
    private readonly Lazy<IComputeBackend> _backend;
    private readonly ConcurrentDictionary<ShardId, Lazy<Task<HostedShard>>> _shards = new();
    private readonly ConcurrentDictionary<string, RunningWork> _work = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<ShardId, OpenDataPlane> _dataPlanes = new();
    private readonly ConcurrentDictionary<string, Lazy<bool>> _merges = new(StringComparer.Ordinal);
    private int _loads;
    private int _adapterMerges;

    public ModelHost(IOptions<ModelHostOptions> options, ILogger<ModelHost> logger)
    {
        _options = options.Value;
        _logger = logger;
        _backend = new Lazy<IComputeBackend>(() => ComputeBackends.Create(_options.Backend, _options.Threads));
    }

    public string BackendName => _options.Backend;

    /// <summary>CPU worker threads this silo's backends use (null: every processor).</summary>
    public int? Threads => _options.Threads;

    /// <summary>How many times weights were read from disk since the silo started.</summary>
    public int ModelLoads => Volatile.Read(ref _loads);

    /// <summary>How many times this silo merged adapters into a model (a cached merged copy is not counted again).</summary>
    public int AdapterMerges => Volatile.Read(ref _adapterMerges);

    public HostMemory GetMemory()
    {
        var modelBytes = LoadedShards().Sum(shard => shard.WeightBytes);
        var total = _options.MemoryLimitBytes ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        var available = _backend.Value.AvailableMemoryBytes;
        if (_options.MemoryLimitBytes is { } limit)
        {
            available = Math.Min(available, Math.Max(0, limit - modelBytes));
        }

        return new HostMemory(total, available, modelBytes);
    }

    /// <summary>
    /// The folder a model reference names on this silo ("builtin" is written on first use). A reference with adapters
    /// ("{model}@adapters={path}") names the merged copy in <see cref="ModelHostOptions.FusedModelDirectory"/>, merged
    /// here when no copy of these exact files is there; later loads (a reactivated grain, a new plan, a restarted silo) reuse it.
    /// </summary>
    public string ResolveModelDirectory(string model)
    {
        var (baseModel, adapters) = ResolveReference(model);
        if (adapters is null)
        {
            return baseModel;
        }

        var target = AdaptedModels.CachedCopyPath(baseModel, adapters, _options.FusedModelDirectory);
        if (Directory.Exists(target))
        {
            return target;
        }

        // Concurrent loads of the same copy (the shards of one plan, a retry) share one merge.
        var merge = _merges.GetOrAdd(target, _ => new Lazy<bool>(() => MergeAdapters(model, baseModel, adapters, target)));
        try
        {
            _ = merge.Value;
        }
        finally
        {
            _merges.TryRemove(new KeyValuePair<string, Lazy<bool>>(target, merge));
        }

        return target;
    }

    /// <summary>The base model folder and the adapter folder (null: none) a reference names on this silo.</summary>
    private (string Model, string? Adapters) ResolveReference(string reference)
    {
        var (model, adapters) = ModelReferences.Parse(reference);
        var directory = string.Equals(model, ModelHostOptions.BuiltInModelReference, StringComparison.OrdinalIgnoreCase)
            || string.Equals(model, BuiltInModel.Name, StringComparison.Ordinal)
            ? BuiltInModel.EnsureCreated(TextWriter.Null)
            : OnThisSilo(model);
        return (directory, adapters is null ? null : OnThisSilo(adapters));
    }

    private string OnThisSilo(string path) => Path.GetFullPath(Path.IsPathRooted(path) ? path : Path.Combine(_options.ModelDirectory, path));

    private bool MergeAdapters(string reference, string model, string adapters, string target)
    {
        var clock = Stopwatch.StartNew();
        if (!AdaptedModels.FuseCached(model, adapters, target))
        {
            return false;
        }

        Interlocked.Increment(ref _adapterMerges);
        LogMerged(_logger, reference, target, clock.Elapsed.TotalSeconds);
        return true;
    }

    public ModelProbe Probe(string siloName, string model)
    {
        var available = GetMemory().AvailableBytes;
        string directory = model;
        try
        {
            // The merged copy has the base model's shapes; merging waits for the load, not for a probe.
            (directory, var adapters) = ResolveReference(model);
            if (adapters is not null)
            {
                AdaptedModels.CheckAdapterDirectory(adapters);
            }

            var configPath = Path.Combine(directory, ModelConfig.FileName);
            if (!File.Exists(configPath))
            {
                return new ModelProbe(siloName, false, directory, 0, 0, 0, BackendName, available, $"{configPath} not found.");
            }

            var config = ModelConfig.Load(configPath);
            var weightBytes = Directory.EnumerateFiles(directory, "*.safetensors").Sum(path => new FileInfo(path).Length);
            // Memory already used by this very model is offered again: re-planning may keep the shard where it is.
            var own = LoadedShards().Where(shard => shard.Assignment.Shard.Model == model).Sum(shard => shard.WeightBytes);
            var required = (long)(weightBytes * (1 + _options.MemoryHeadroom));
            return new ModelProbe(siloName, true, directory, config.LayerCount, weightBytes, required, BackendName, available + own, null)
            {
                AttentionHeadCount = config.AttentionHeadCount,
                ExpertCount = config.MixtureOfExperts?.ExpertCount ?? 0,
            };
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ModelLoadException or ArgumentException or InvalidDataException)
        {
            return new ModelProbe(siloName, false, directory, 0, 0, 0, BackendName, available, e.Message);
        }
    }

    /// <summary>
    /// Binds the data-plane listener of a shard of a split model, on <paramref name="address"/> (the silo's advertised
    /// address), for the plan version of <paramref name="assignment"/>; a listener of an older version is closed.
    /// </summary>
    public DataPlaneEndpoint OpenDataPlane(ShardAssignment assignment, string address)
    {
        var listener = DataPlaneListener.Bind(address);
        var opened = new OpenDataPlane(assignment.PlanVersion, listener);
        _dataPlanes.AddOrUpdate(assignment.Shard, opened, (_, old) =>
        {
            old.Listener.Dispose();
            return opened;
        });
        var endpoint = listener.Endpoint;
        return new DataPlaneEndpoint(endpoint.Address, endpoint.Port, endpoint.HostId);
    }

    /// <summary>
    /// Loads a shard once; concurrent and later calls for the same shard share that load. A shard of a split model
    /// (<paramref name="group"/> set) first forms its plan's data-plane group from the listener
    /// <see cref="OpenDataPlane"/> bound, then maps its part of the weights.
    /// </summary>
    public async Task<HostedShard> LoadAsync(ShardAssignment assignment, ShardGroup? group, CancellationToken cancellationToken)
    {
        if (group is null)
        {
            ValidateRunnable(assignment);
        }

        while (true)
        {
            var entry = _shards.GetOrAdd(assignment.Shard, _ => new Lazy<Task<HostedShard>>(
                () => Task.Run(() => group is null ? LoadCore(assignment) : LoadInGroup(assignment, group))));
            HostedShard shard;
            try
            {
                shard = await entry.Value.WaitAsync(cancellationToken);
            }
            catch (Exception) when (!cancellationToken.IsCancellationRequested)
            {
                // A failed load must not stick: the next attempt reads the files again.
                _shards.TryRemove(new KeyValuePair<ShardId, Lazy<Task<HostedShard>>>(assignment.Shard, entry));
                throw;
            }

            if (shard.Covers(assignment, group))
            {
                if (group is null)
                {
                    shard.Assignment = assignment;
                }

                return shard;
            }

            Unload(assignment.Shard);
        }
    }

    public HostedShard? Find(ShardId shard) =>
        _shards.TryGetValue(shard, out var entry) && entry.IsValueCreated && entry.Value.IsCompletedSuccessfully
            ? entry.Value.Result
            : null;

    public bool Unload(ShardId shard)
    {
        if (!_shards.TryRemove(shard, out var entry))
        {
            return false;
        }

        if (entry.IsValueCreated && entry.Value.IsCompletedSuccessfully)
        {
            // Release waits for a running generation to finish; the caller (often a grain turn) must not.
            var hosted = entry.Value.Result;
            _ = Task.Run(hosted.Release);
            LogUnloaded(_logger, shard.ToGrainKey());
        }

        return true;
    }

    public IReadOnlyList<HostedShard> LoadedShards() =>
        [.. _shards.Values.Where(entry => entry.IsValueCreated && entry.Value.IsCompletedSuccessfully).Select(entry => entry.Value.Result)];

    public IReadOnlyList<WorkItem> CurrentWork() =>
        [.. _work.Values.Select(work => new WorkItem(work.JobId, work.Model, work.PromptTokens, work.GeneratedTokens, work.StartedAt))];

    internal RunningWork BeginWork(string jobId, string model, int promptTokens)
    {
        var work = new RunningWork(jobId, model, promptTokens, DateTimeOffset.UtcNow, this);
        _work[jobId] = work;
        return work;
    }

    internal void EndWork(RunningWork work) => _work.TryRemove(new KeyValuePair<string, RunningWork>(work.JobId, work));

    public void Dispose()
    {
        foreach (var shard in _shards.Keys)
        {
            Unload(shard);
        }

        foreach (var shard in _dataPlanes.Keys)
        {
            if (_dataPlanes.TryRemove(shard, out var open))
            {
                open.Listener.Dispose();
            }
        }

        if (_backend.IsValueCreated)
        {
            _backend.Value.Dispose();
        }
    }

    /// <summary>Layer ranges and tensor splits need the peers of their data-plane group.</summary>
    private static void ValidateRunnable(ShardAssignment assignment)
    {
        if (assignment.PipelineStageCount != 1 || assignment.TensorGroupSize != 1 || assignment.FirstLayer != 0)
        {
            throw new ArgumentException(
                $"Shard {assignment.Shard} is one part of a split model (stage {assignment.PipelineStage + 1} of {assignment.PipelineStageCount}, " +
                $"tensor rank {assignment.TensorRank + 1} of {assignment.TensorGroupSize}); load it in its plan's data-plane group.");
        }
    }

    private HostedShard LoadCore(ShardAssignment assignment)
    {
        var directory = ResolveModelDirectory(assignment.Shard.Model);
        LogLoading(_logger, assignment.Shard.ToGrainKey(), directory, BackendName);
        var clock = Stopwatch.StartNew();
        var loaded = ModelLoader.Load(directory, _backend.Value);
        if (assignment.LayerCount != loaded.Model.Config.LayerCount)
        {
            loaded.Dispose();
            throw new InvalidOperationException(
                $"The plan gives shard {assignment.Shard} {assignment.LayerCount} layers but {directory} has {loaded.Model.Config.LayerCount}.");
        }

        Interlocked.Increment(ref _loads);
        var shard = new HostedShard(assignment, loaded, DateTimeOffset.UtcNow, clock.Elapsed, batching: _options.Batching);
        LogLoaded(_logger, assignment.Shard.ToGrainKey(), shard.WeightBytes, clock.Elapsed.TotalSeconds);
        return shard;
    }

    private HostedShard LoadInGroup(ShardAssignment assignment, ShardGroup group)
    {
        var key = assignment.Shard.ToGrainKey();
        if (!_dataPlanes.TryRemove(assignment.Shard, out var open) || open.PlanVersion != assignment.PlanVersion)
        {
            open?.Listener.Dispose();
            throw new ShardGroupException(key, $"Shard {key} has no data-plane listener for plan {assignment.PlanVersion}; the coordinator must open it first.");
        }

        if (assignment.WorldRank >= group.Peers.Length)
        {
            open.Listener.Dispose();
            throw new ArgumentException($"Shard {key} has rank {assignment.WorldRank} but its group lists {group.Peers.Length} peers.");
        }

        var directory = ResolveModelDirectory(assignment.Shard.Model);
        LogJoining(_logger, key, assignment.WorldRank, group.Peers.Length, string.Join(", ", group.Peers.Select(peer => peer.ToString())));
        var clock = Stopwatch.StartNew();
        Group world;
        try
        {
            var options = new CollectiveOptions
            {
                Rank = assignment.WorldRank,
                WorldSize = group.Peers.Length,
                Backend = group.Backend,
                Timeout = group.Timeout,
                ConnectTimeout = group.ConnectTimeout,
            };
            world = Group.Init(options, open.Listener, [.. group.Peers.Select(peer => new DataPlanePeer(peer.Address, peer.Port, peer.HostId))], group.GroupId);
        }
        catch (CollectiveException e)
        {
            throw new ShardGroupException(key, $"Shard {key} could not join the data-plane group of plan {assignment.PlanVersion}: {e.Message}");
        }
        finally
        {
            open.Listener.Dispose();
        }

        ShardGroups? groups = null;
        try
        {
            // World ranks run stage by stage; the shards of a stage split its layers, equal tensor ranks chain the stages.
            var (tensor, pipeline) = (assignment.PipelineStageCount, assignment.TensorGroupSize) switch
            {
                (1, _) => (world, null),
                (_, 1) => ((Group?)null, world),
                _ => (world.Split(assignment.PipelineStage, assignment.TensorRank), world.Split(assignment.TensorRank, assignment.PipelineStage)),
            };
            groups = new ShardGroups(group, world, tensor, pipeline);
            var loaded = ShardedModelLoader.ShardedLoad(
                directory, _backend.Value, pipeline, tensor, layers: new ShardRange(assignment.FirstLayer, assignment.LayerCount));
            Interlocked.Increment(ref _loads);
            var shard = new HostedShard(assignment, loaded, DateTimeOffset.UtcNow, clock.Elapsed, groups, _options.Batching);
            LogLoaded(_logger, key, shard.WeightBytes, clock.Elapsed.TotalSeconds);
            return shard;
        }
        catch (CollectiveException e)
        {
            (groups as IDisposable ?? world).Dispose();
            throw new ShardGroupException(key, $"Shard {key}: the data-plane group of plan {assignment.PlanVersion} failed while loading: {e.Message}");
        }
        catch
        {
            (groups as IDisposable ?? world).Dispose();
            throw;
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Shard {Shard} joins its data-plane group as rank {Rank} of {Size}: {Peers}")]
    private static partial void LogJoining(ILogger logger, string shard, int rank, int size, string peers);

    [LoggerMessage(Level = LogLevel.Information, Message = "Loading shard {Shard} from {Directory} on the {Backend} backend")]
    private static partial void LogLoading(ILogger logger, string shard, string directory, string backend);

    [LoggerMessage(Level = LogLevel.Information, Message = "Loaded shard {Shard}: {WeightBytes} bytes of weights in {Seconds:F2} s")]
    private static partial void LogLoaded(ILogger logger, string shard, long weightBytes, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "Merged the adapters of {Model} into {Directory} in {Seconds:F2} s")]
    private static partial void LogMerged(ILogger logger, string model, string directory, double seconds);

    [LoggerMessage(Level = LogLevel.Information, Message = "Unloaded shard {Shard}")]
    private static partial void LogUnloaded(ILogger logger, string shard);
}

/// <summary>A data-plane listener bound for one plan version, waiting for its shard to join the group.</summary>
internal sealed record OpenDataPlane(int PlanVersion, DataPlaneListener Listener);

/// <summary>A generation in progress on this silo, for status.</summary>
internal sealed class RunningWork(string jobId, string model, int promptTokens, DateTimeOffset startedAt, ModelHost host) : IDisposable
{
    private int _generated;

    public string JobId { get; } = jobId;

    public string Model { get; } = model;

    public int PromptTokens { get; } = promptTokens;

    public DateTimeOffset StartedAt { get; } = startedAt;

    public int GeneratedTokens => Volatile.Read(ref _generated);

    public void CountToken() => Interlocked.Increment(ref _generated);

    public void Dispose() => host.EndWork(this);
}
