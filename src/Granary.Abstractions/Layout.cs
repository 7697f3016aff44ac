namespace Granary.Abstractions;

/// <summary>
/// How a model is spread over the cluster: pipeline stages run consecutive layer ranges one after another; the
/// shards of a stage form a tensor-parallel group that splits each of those layers. A whole model on one silo is
/// one stage with a group of one.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.ModelPlan")]
public sealed record ModelPlan(
    [property: Id(0)] string Model,
    [property: Id(1)] int Version,
    [property: Id(2)] int LayerCount,
    [property: Id(3)] long WeightBytes,
    [property: Id(4)] PipelineStage[] Stages,
    [property: Id(5)] DateTimeOffset CreatedAt)
{
    /// <summary>The shard that receives the prompt and streams tokens: rank 0 of the first stage.</summary>
    public ShardAssignment Leader => Stages[0].TensorGroup[0];

    /// <summary>Every shard, in world-rank order (stage by stage, tensor rank within a stage).</summary>
    public IEnumerable<ShardAssignment> Shards => Stages.SelectMany(stage => stage.TensorGroup);

    public int ShardCount => Stages.Sum(stage => stage.TensorGroup.Length);

    /// <summary>"single", "tensor", "pipeline" or "pipeline+tensor".</summary>
    public string Layout => (Stages.Length, Stages[0].TensorGroup.Length) switch
    {
        (1, 1) => "single",
        (1, _) => "tensor",
        (_, 1) => "pipeline",
        _ => "pipeline+tensor",
    };

    /// <summary>The data-plane group the shards of a split model form (null for a model on one silo).</summary>
    [Id(6)]
    public ShardGroup? Group { get; init; }

    /// <summary>The silo the model's coordinator runs on.</summary>
    [Id(7)]
    public string? CoordinatorSilo { get; init; }
}

/// <summary>Where a shard's data plane listens: its silo's address, a port it bound, and an identity of its machine.</summary>
[GenerateSerializer, Immutable, Alias("granary.DataPlaneEndpoint")]
public sealed record DataPlaneEndpoint(
    [property: Id(0)] string Address,
    [property: Id(1)] int Port,
    [property: Id(2)] string HostId)
{
    public override string ToString() => $"{Address}:{Port}";
}

/// <summary>
/// The collective group of one plan version: every shard's data-plane endpoint in world-rank order, exchanged through
/// the coordinator grain, and how the group behaves. Tensors move over it, never through grain calls.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.ShardGroup")]
public sealed record ShardGroup(
    [property: Id(0)] Guid GroupId,
    [property: Id(1)] DataPlaneEndpoint[] Peers,
    [property: Id(2)] string Backend,
    [property: Id(3)] TimeSpan Timeout,
    [property: Id(4)] TimeSpan ConnectTimeout);

[GenerateSerializer, Immutable, Alias("granary.PipelineStage")]
public sealed record PipelineStage(
    [property: Id(0)] int Index,
    [property: Id(1)] int FirstLayer,
    [property: Id(2)] int LayerCount,
    [property: Id(3)] ShardAssignment[] TensorGroup);

/// <summary>What one shard grain loads and which groups it belongs to.</summary>
[GenerateSerializer, Immutable, Alias("granary.ShardAssignment")]
public sealed record ShardAssignment(
    [property: Id(0)] ShardId Shard,
    [property: Id(1)] int PlanVersion,
    [property: Id(2)] int PipelineStage,
    [property: Id(3)] int PipelineStageCount,
    [property: Id(4)] int FirstLayer,
    [property: Id(5)] int LayerCount,
    [property: Id(6)] int TensorRank,
    [property: Id(7)] int TensorGroupSize)
{
    /// <summary>This shard's rank in its plan's data-plane group: stage by stage, tensor rank within a stage.</summary>
    public int WorldRank => (PipelineStage * TensorGroupSize) + TensorRank;
}

/// <summary>
/// A silo's answer to "could you hold this model?": its size on disk, the memory it needs there (weights plus
/// room for caches and activations), and the memory the silo can offer it.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.ModelProbe")]
public sealed record ModelProbe(
    [property: Id(0)] string SiloName,
    [property: Id(1)] bool Found,
    [property: Id(2)] string Directory,
    [property: Id(3)] int LayerCount,
    [property: Id(4)] long WeightBytes,
    [property: Id(5)] long RequiredBytes,
    [property: Id(6)] string Backend,
    [property: Id(7)] long AvailableBytes,
    [property: Id(8)] string? Problem)
{
    /// <summary>Attention heads per layer: a tensor-parallel split must divide them.</summary>
    [Id(9)]
    public int AttentionHeadCount { get; init; } = 1;

    /// <summary>Experts per mixture-of-experts layer (0 for dense models): a tensor-parallel split needs one per rank.</summary>
    [Id(10)]
    public int ExpertCount { get; init; }
}
