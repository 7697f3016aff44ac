namespace Granary.Abstractions;

/// <summary>A silo's own agent, keyed by silo name and pinned to that silo: reports and probes local resources.</summary>
[Alias("granary.IHostAgentGrain")]
public interface IHostAgentGrain : IGrainWithStringKey
{
    Task<HostReport> GetReportAsync();

    /// <summary>Whether this silo has <paramref name="model"/> on disk, and how big it is.</summary>
    Task<ModelProbe> ProbeModelAsync(string model);
}

/// <summary>
/// One shard of a model, keyed by <see cref="ShardId.ToGrainKey"/> and pinned to the silo it names. Its weights
/// live in the silo's model host, so a reactivation finds them loaded. Messages carry control only.
/// </summary>
[Alias("granary.IShardGrain")]
public interface IShardGrain : IGrainWithStringKey
{
    /// <summary>Loads the shard if this silo does not hold it yet (a whole model, in a plan of one shard).</summary>
    Task<ShardStatus> LoadAsync(ShardAssignment assignment, CancellationToken cancellationToken = default);

    /// <summary>
    /// First step of loading a split model: binds a data-plane listener on this silo's address for the plan version of
    /// <paramref name="assignment"/> and returns its endpoint, which the coordinator hands to every shard of the plan.
    /// </summary>
    Task<DataPlaneEndpoint> OpenDataPlaneAsync(ShardAssignment assignment);

    /// <summary>
    /// Second step: forms the plan's collective <paramref name="group"/> (within its connect timeout) and loads this
    /// shard's part of the model over it.
    /// </summary>
    Task<ShardStatus> LoadInGroupAsync(ShardAssignment assignment, ShardGroup group, CancellationToken cancellationToken = default);

    /// <summary>
    /// Third step, once every shard of a split plan has loaded: the leader (world rank 0) starts the plan's batching
    /// engine and every other shard starts following it over the data plane (each batched step's cache changes and
    /// token ids), until the leader is unloaded or the group fails. Returns once started; calling it again does nothing.
    /// </summary>
    Task StartServingAsync(int planVersion);

    /// <summary>Turns a prompt into token ids with the model's tokenizer and chat format.</summary>
    Task<int[]> EncodePromptAsync(Prompt prompt);

    /// <summary>Runs a generation on this shard (the leader of its plan) and streams the tokens.</summary>
    IAsyncEnumerable<TokenChunk> GenerateAsync(ShardGenerationRequest request, CancellationToken cancellationToken = default);

    Task UnloadAsync();
}

/// <summary>
/// Drives one model, keyed by the model reference ("builtin", a folder under the silos' model directory, or an
/// absolute path present on the silos): plans its layout over live silos, has the shards load, runs generations.
/// </summary>
[Alias("granary.ICoordinatorGrain")]
public interface ICoordinatorGrain : IGrainWithStringKey
{
    /// <summary>Plans and loads the model, or returns the current plan if every shard's silo is still alive.</summary>
    Task<ModelPlan> LoadAsync(CancellationToken cancellationToken = default);

    Task<ModelPlan?> GetPlanAsync();

    /// <summary>
    /// Streams a generation. If a shard's silo dies on the way, the model is re-planned over the survivors and the
    /// stream resumes from the tokens already produced.
    /// </summary>
    IAsyncEnumerable<TokenChunk> GenerateAsync(GenerationJob job, CancellationToken cancellationToken = default);

    /// <summary>
    /// Fine-tunes the model data parallel over the live silos that can hold it and streams the reports. If a silo
    /// dies, training resumes on the survivors from the last checkpoint.
    /// </summary>
    IAsyncEnumerable<TrainingProgress> TrainAsync(TrainingJob job, CancellationToken cancellationToken = default);

    Task UnloadAsync();
}

/// <summary>Cluster-wide status: every silo membership knows, with its report, and the loaded models' plans.</summary>
[Alias("granary.IClusterStatusGrain")]
public interface IClusterStatusGrain : IGrainWithIntegerKey
{
    Task<ClusterStatus> GetStatusAsync();
}

/// <summary>Placement could not put a silo-pinned grain on its silo because no active silo has that name.</summary>
[GenerateSerializer, Alias("granary.SiloNotInClusterException")]
public sealed class SiloNotInClusterException : Exception
{
    public SiloNotInClusterException(string siloName, string message)
        : base(message) => SiloName = siloName;

    [Id(0)]
    public string SiloName { get; private set; }
}

/// <summary>A shard grain was asked to work but its silo does not hold the shard (the silo restarted, or it was unloaded).</summary>
[GenerateSerializer, Alias("granary.ShardNotLoadedException")]
public sealed class ShardNotLoadedException : Exception
{
    public ShardNotLoadedException(string shardKey)
        : base($"Shard '{shardKey}' is not loaded on its silo.") => ShardKey = shardKey;

    [Id(0)]
    public string ShardKey { get; private set; }
}

/// <summary>No set of live silos can hold the model; the message lists what each silo offered.</summary>
[GenerateSerializer, Alias("granary.InsufficientClusterCapacityException")]
public sealed class InsufficientClusterCapacityException(string message) : Exception(message);

/// <summary>
/// A shard's collective group failed (a peer died, stalled past the timeout, or left): every shard of that plan version
/// must be loaded again in a new group, so the coordinator re-plans.
/// </summary>
[GenerateSerializer, Alias("granary.ShardGroupException")]
public sealed class ShardGroupException : Exception
{
    public ShardGroupException(string shardKey, string message)
        : base(message) => ShardKey = shardKey;

    [Id(0)]
    public string ShardKey { get; private set; }
}
