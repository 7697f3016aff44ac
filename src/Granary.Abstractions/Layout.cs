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

    public IEnumerable<ShardAssignment> Shards => Stages.SelectMany(stage => stage.TensorGroup);
}

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
    [property: Id(7)] int TensorGroupSize);

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
    [property: Id(8)] string? Problem);
