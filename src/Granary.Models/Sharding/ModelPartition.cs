using System.Diagnostics;
using Granary.Collectives;
using Granary.Models.Configuration;
using Granary.Tensors;

namespace Granary.Models.Sharding;

/// <summary>
/// What one rank holds of a model: a run of layers (its pipeline stage) and, within each layer, its tensor-parallel
/// share: a run of query heads with the key/value heads they read, a run of MLP features, a run of experts, and a run
/// of the vocabulary for the output head. A rank of a group of one holds everything.
/// </summary>
internal sealed class ModelPartition
{
    private long _communicationTicks;

    private ModelPartition(ModelConfig config, Group? tensorGroup, Group? pipelineGroup, ShardRange layers)
    {
        TensorGroup = tensorGroup is { Size: > 1 } ? tensorGroup : null;
        PipelineGroup = pipelineGroup is { Size: > 1 } ? pipelineGroup : null;
        var (rank, size) = (TensorRank, TensorSize);
        Layers = layers;

        var heads = config.AttentionHeadCount;
        var kvHeads = config.KeyValueHeadCount;
        if (heads % size != 0)
        {
            throw new ArgumentException($"{heads} attention heads cannot be split over {size} tensor-parallel ranks.");
        }

        Heads = new ShardRange(heads / size * rank, heads / size);
        KeyValueHeads = KeyValueHeadsFor(Heads, heads / kvHeads);

        // Quantized MLP features are split in whole quantization groups where there are enough groups to go round,
        // so down_proj keeps its quantized form; otherwise its input slice is dequantized at load.
        var groupSize = config.Quantization?.Global.GroupSize ?? 1;
        Intermediate = FeatureRange(config.IntermediateSize, groupSize);
        if (config.MixtureOfExperts is { } moe)
        {
            if (moe.ExpertCount < size)
            {
                throw new ArgumentException($"{moe.ExpertCount} experts cannot be split over {size} tensor-parallel ranks.");
            }

            Experts = ShardRange.Balanced(moe.ExpertCount, size, rank);
        }

        var vocabulary = config.VocabularySize;
        VocabularyChunk = (vocabulary + size - 1) / size;
        var vocabularyStart = Math.Min(vocabulary, VocabularyChunk * rank);
        Vocabulary = new ShardRange(vocabularyStart, Math.Min(vocabulary, vocabularyStart + VocabularyChunk) - vocabularyStart);
        if (Vocabulary.Count < 1)
        {
            throw new ArgumentException($"A vocabulary of {vocabulary} tokens cannot be split over {size} tensor-parallel ranks.");
        }

        ShardRange FeatureRange(int features, int unit) =>
            features / unit >= size && features % unit == 0
                ? ShardRange.Balanced(features, size, rank, unit)
                : features >= size
                    ? ShardRange.Balanced(features, size, rank)
                    : throw new ArgumentException($"{features} MLP features cannot be split over {size} tensor-parallel ranks.");
    }

    public Group? TensorGroup { get; }

    public Group? PipelineGroup { get; }

    public int TensorRank => TensorGroup?.Rank ?? 0;

    public int TensorSize => TensorGroup?.Size ?? 1;

    public int PipelineStage => PipelineGroup?.Rank ?? 0;

    public int PipelineStages => PipelineGroup?.Size ?? 1;

    public bool IsFirstStage => PipelineStage == 0;

    public bool IsLastStage => PipelineStage == PipelineStages - 1;

    /// <summary>The decoder layers this rank runs.</summary>
    public ShardRange Layers { get; }

    /// <summary>Query heads this rank computes.</summary>
    public ShardRange Heads { get; }

    /// <summary>
    /// Key/value heads this rank holds, in the order its query heads use them: one run when the split follows the
    /// grouping, otherwise one head per query head (replicated across the ranks that share it).
    /// </summary>
    public ShardRange[] KeyValueHeads { get; }

    public int KeyValueHeadCount => KeyValueHeads.Sum(r => r.Count);

    /// <summary>Features of the dense MLP this rank computes.</summary>
    public ShardRange Intermediate { get; }

    /// <summary>Experts of each mixture-of-experts layer this rank holds (all of them on a rank of one); empty for dense models.</summary>
    public ShardRange Experts { get; }

    /// <summary>Vocabulary rows of the output head this rank computes.</summary>
    public ShardRange Vocabulary { get; }

    /// <summary>Logits per rank in the gathered vector (the last rank's run is padded up to it).</summary>
    public int VocabularyChunk { get; }

    /// <summary>
    /// Time this rank spent in collectives and pipeline transfers since load (waiting for a peer included: under
    /// pipeline parallelism a receive also waits for the earlier stages' compute).
    /// </summary>
    public TimeSpan CommunicationTime => Stopwatch.GetElapsedTime(0, _communicationTicks);

    /// <summary>Sums a partial result over the tensor group in place; nothing to do without tensor parallelism.</summary>
    public void AllSum(Tensor partial)
    {
        if (TensorGroup is { } group)
        {
            var start = Stopwatch.GetTimestamp();
            group.AllSum(partial);
            _communicationTicks += Stopwatch.GetTimestamp() - start;
        }
    }

    public void AllGather(ReadOnlySpan<float> run, Span<float> all)
    {
        var start = Stopwatch.GetTimestamp();
        TensorGroup!.AllGather(run, all);
        _communicationTicks += Stopwatch.GetTimestamp() - start;
    }

    /// <summary>Activations from the previous pipeline stage.</summary>
    public void ReceiveFromPreviousStage(Tensor hidden)
    {
        var start = Stopwatch.GetTimestamp();
        PipelineGroup!.Recv(hidden, PipelineStage - 1);
        _communicationTicks += Stopwatch.GetTimestamp() - start;
    }

    public void SendToNextStage(Tensor hidden)
    {
        var start = Stopwatch.GetTimestamp();
        PipelineGroup!.Send(hidden, PipelineStage + 1);
        _communicationTicks += Stopwatch.GetTimestamp() - start;
    }

    /// <summary>
    /// The last stage's logits (or, for generation, just its sampled token ids) to every stage; nothing to do without
    /// pipeline parallelism.
    /// </summary>
    public void BroadcastFromLastStage<T>(Span<T> values)
        where T : unmanaged
    {
        if (PipelineGroup is { } group)
        {
            var start = Stopwatch.GetTimestamp();
            group.Broadcast(values, group.Size - 1);
            _communicationTicks += Stopwatch.GetTimestamp() - start;
        }
    }

    public static ModelPartition Whole(ModelConfig config) => new(config, null, null, new ShardRange(0, config.LayerCount));

    public static ModelPartition Create(ModelConfig config, Group? tensorGroup, Group? pipelineGroup, ShardRange layers) =>
        new(config, tensorGroup, pipelineGroup, layers);

    private static ShardRange[] KeyValueHeadsFor(ShardRange heads, int queriesPerKeyValue)
    {
        if (heads.Count % queriesPerKeyValue == 0)
        {
            return [new ShardRange(heads.Start / queriesPerKeyValue, heads.Count / queriesPerKeyValue)];
        }

        if (queriesPerKeyValue % heads.Count == 0)
        {
            return [new ShardRange(heads.Start / queriesPerKeyValue, 1)];
        }

        return Enumerable.Range(heads.Start, heads.Count).Select(h => new ShardRange(h / queriesPerKeyValue, 1)).ToArray();
    }
}
