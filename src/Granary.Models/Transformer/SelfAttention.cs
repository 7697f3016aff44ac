using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>Grouped-query self-attention of one layer, with optional per-head q/k RMS norm (Qwen3).</summary>
public sealed class SelfAttention : IDisposable
{
    private readonly ModelConfig _config;
    private readonly float _scale;

    internal SelfAttention(
        ModelConfig config, int heads, int keyValueHeads, LinearWeight query, LinearWeight key, LinearWeight value, LinearWeight output, Tensor? queryNorm, Tensor? keyNorm,
        DenseWeight? queryKeyValue = null)
    {
        _config = config;
        _scale = (float)(1.0 / Math.Sqrt(config.HeadDim));
        HeadCount = heads;
        KeyValueHeadCount = keyValueHeads;
        QueryProjection = query;
        KeyProjection = key;
        ValueProjection = value;
        OutputProjection = output;
        QueryNorm = queryNorm;
        KeyNorm = keyNorm;
        QueryKeyValue = queryKeyValue;
    }

    /// <summary>Query heads this rank computes (all of them without tensor parallelism).</summary>
    public int HeadCount { get; }

    /// <summary>Key/value heads this rank holds and caches.</summary>
    public int KeyValueHeadCount { get; }

    public LinearWeight QueryProjection { get; }

    public LinearWeight KeyProjection { get; }

    public LinearWeight ValueProjection { get; }

    public LinearWeight OutputProjection { get; }

    public Tensor? QueryNorm { get; }

    public Tensor? KeyNorm { get; }

    /// <summary>
    /// q, k and v stacked as one [q + 2 kv, hidden] weight for the fused decode step, or null. When set, the three
    /// projections are row views of it, so the weights are held once.
    /// </summary>
    internal DenseWeight? QueryKeyValue { get; }

    /// <summary>1 / sqrt(head dim).</summary>
    internal float Scale => _scale;

    public long WeightBytes =>
        QueryProjection.WeightBytes + KeyProjection.WeightBytes + ValueProjection.WeightBytes + OutputProjection.WeightBytes
        + (QueryNorm?.ByteLength ?? 0) + (KeyNorm?.ByteLength ?? 0);

    /// <summary>
    /// Loads this rank's heads: q/k/v split by output features (whole heads), o_proj by input features, its bias kept
    /// by tensor rank 0 only since the ranks' partial outputs are summed.
    /// </summary>
    /// <param name="stack">
    /// Load q, k and v stacked into one weight (<see cref="QueryKeyValue"/>) for a backend's fused decode step; only
    /// where they are dense and of one dtype (the caller checks that they are not quantized).
    /// </param>
    internal static SelfAttention Load(WeightLoader weights, ModelConfig config, string prefix, ModelPartition partition, IComputeBackend? stack = null)
    {
        var headDim = config.HeadDim;
        var queryWidth = config.AttentionHeadCount * headDim;
        var keyValueWidth = config.KeyValueHeadCount * headDim;
        var heads = partition.Heads;
        var keyValueRanges = partition.KeyValueHeads.Select(r => new ShardRange(r.Start * headDim, r.Count * headDim)).ToArray();
        var whole = partition.TensorSize == 1;
        var loaded = new List<IDisposable>();
        try
        {
            var query = loaded.Keep(weights.Linear(
                prefix + "q_proj", queryWidth, config.HiddenSize, config.QueryKeyValueBias,
                whole ? LinearSlice.Whole : LinearSlice.Outputs(new ShardRange(heads.Start * headDim, heads.Count * headDim))));
            var keyValueSlice = whole ? LinearSlice.Whole : LinearSlice.Outputs(keyValueRanges);
            var key = loaded.Keep(weights.Linear(prefix + "k_proj", keyValueWidth, config.HiddenSize, config.QueryKeyValueBias, keyValueSlice));
            var value = loaded.Keep(weights.Linear(prefix + "v_proj", keyValueWidth, config.HiddenSize, config.QueryKeyValueBias, keyValueSlice));
            var output = loaded.Keep(weights.Linear(
                prefix + "o_proj", config.HiddenSize, queryWidth, config.OutputProjectionBias,
                whole ? LinearSlice.Whole : LinearSlice.Inputs(new ShardRange(heads.Start * headDim, heads.Count * headDim), keepBias: partition.TensorRank == 0)));
            var queryNorm = config.QueryKeyNorm ? loaded.Keep(weights.Vector(prefix + "q_norm.weight", headDim)) : null;
            var keyNorm = config.QueryKeyNorm ? loaded.Keep(weights.Vector(prefix + "k_norm.weight", headDim)) : null;
            if (stack is not null && StackedWeights.Stack(stack, [query, key, value]) is { } stacked)
            {
                loaded.Add(stacked);
                return new SelfAttention(
                    config, heads.Count, partition.KeyValueHeadCount, stacked.Views[0], stacked.Views[1], stacked.Views[2], output, queryNorm, keyNorm, stacked.Weight);
            }

            return new SelfAttention(config, heads.Count, partition.KeyValueHeadCount, query, key, value, output, queryNorm, keyNorm);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>
    /// output = o_proj(attention(rope(q), rope(k), v)) for every row of the pass; the projections run over all rows at
    /// once, the cache writes and attention per sequence against its own cache. Under tensor parallelism a partial sum
    /// over this rank's heads.
    /// </summary>
    internal void Forward(IComputeBackend backend, Tensor input, ForwardScratch.StepTensors step, PassLayout pass, int layer, Tensor output)
    {
        backend.Linears(input, [QueryProjection, KeyProjection, ValueProjection], [step.Query, step.Key, step.Value]);

        if (QueryNorm is not null && KeyNorm is not null)
        {
            backend.RmsNorm(step.QueryHeads, QueryNorm, _config.RmsNormEpsilon, step.QueryNormedHeads!);
            backend.RmsNorm(step.KeyHeads, KeyNorm, _config.RmsNormEpsilon, step.KeyNormedHeads!);
        }

        backend.Rope(step.RotatedQueryHeads, pass.Positions, pass.InverseFrequencies, _config.Rope.AttentionScaling);
        backend.Rope(step.RotatedKeyHeads, pass.Positions, pass.InverseFrequencies, _config.Rope.AttentionScaling);

        foreach (var segment in pass.Segments)
        {
            var keys = segment.Cache.Keys[layer]!;
            var values = segment.Cache.Values[layer]!;
            backend.Copy(segment.Key, keys.Slice(segment.Start, segment.Count));
            backend.Copy(segment.Value, values.Slice(segment.Start, segment.Count));
            backend.Attention(segment.Query, keys, values, segment.Start, _scale, segment.Attention);
        }

        backend.Linear(step.Attention, OutputProjection, output);
    }

    public void Dispose()
    {
        QueryProjection.Dispose();
        KeyProjection.Dispose();
        ValueProjection.Dispose();
        OutputProjection.Dispose();
        QueryNorm?.Dispose();
        KeyNorm?.Dispose();
        QueryKeyValue?.Dispose();
    }
}
