namespace Granary.Models.Sharding;

/// <summary>
/// The part of a model one rank holds: its pipeline stage and the decoder layers it runs, its place in the tensor
/// group, and the bytes of weights it holds (what it maps or copies from the checkpoint).
/// </summary>
public sealed record ModelShard(int PipelineStage, int PipelineStages, int TensorRank, int TensorSize, ShardRange Layers, long WeightBytesHeld);
