using Granary.Models.Configuration;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>Grouped-query self-attention of one layer, with optional per-head q/k RMS norm (Qwen3).</summary>
public sealed class SelfAttention : IDisposable
{
    private readonly ModelConfig _config;
    private readonly float _scale;

    internal SelfAttention(ModelConfig config, LinearWeight query, LinearWeight key, LinearWeight value, LinearWeight output, Tensor? queryNorm, Tensor? keyNorm)
    {
        _config = config;
        _scale = (float)(1.0 / Math.Sqrt(config.HeadDim));
        QueryProjection = query;
        KeyProjection = key;
        ValueProjection = value;
        OutputProjection = output;
        QueryNorm = queryNorm;
        KeyNorm = keyNorm;
    }

    public LinearWeight QueryProjection { get; }

    public LinearWeight KeyProjection { get; }

    public LinearWeight ValueProjection { get; }

    public LinearWeight OutputProjection { get; }

    public Tensor? QueryNorm { get; }

    public Tensor? KeyNorm { get; }

    public long WeightBytes =>
        QueryProjection.WeightBytes + KeyProjection.WeightBytes + ValueProjection.WeightBytes + OutputProjection.WeightBytes
        + (QueryNorm?.ByteLength ?? 0) + (KeyNorm?.ByteLength ?? 0);

    internal static SelfAttention Load(WeightLoader weights, ModelConfig config, string prefix)
    {
        var queryWidth = config.AttentionHeadCount * config.HeadDim;
        var keyValueWidth = config.KeyValueHeadCount * config.HeadDim;
        var loaded = new List<IDisposable>();
        try
        {
            var query = loaded.Keep(weights.Linear(prefix + "q_proj", queryWidth, config.HiddenSize, config.QueryKeyValueBias));
            var key = loaded.Keep(weights.Linear(prefix + "k_proj", keyValueWidth, config.HiddenSize, config.QueryKeyValueBias));
            var value = loaded.Keep(weights.Linear(prefix + "v_proj", keyValueWidth, config.HiddenSize, config.QueryKeyValueBias));
            var output = loaded.Keep(weights.Linear(prefix + "o_proj", config.HiddenSize, queryWidth, config.OutputProjectionBias));
            var queryNorm = config.QueryKeyNorm ? loaded.Keep(weights.Vector(prefix + "q_norm.weight", config.HeadDim)) : null;
            var keyNorm = config.QueryKeyNorm ? loaded.Keep(weights.Vector(prefix + "k_norm.weight", config.HeadDim)) : null;
            return new SelfAttention(config, query, key, value, output, queryNorm, keyNorm);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>output = o_proj(attention(rope(q), rope(k), v)) for the tokens at positions start..start+n-1.</summary>
    internal void Forward(IComputeBackend backend, Tensor input, ForwardScratch.StepTensors step, KvCache cache, int layer, Tensor positions, Tensor output)
    {
        var n = step.Count;
        var start = cache.Length;
        backend.Linear(input, QueryProjection, step.Query);
        backend.Linear(input, KeyProjection, step.Key);
        backend.Linear(input, ValueProjection, step.Value);

        var query = step.QueryHeads;
        var key = step.KeyHeads;
        if (QueryNorm is not null && KeyNorm is not null)
        {
            backend.RmsNorm(query, QueryNorm, _config.RmsNormEpsilon, step.QueryNormedHeads!);
            backend.RmsNorm(key, KeyNorm, _config.RmsNormEpsilon, step.KeyNormedHeads!);
            query = step.QueryNormedHeads!;
            key = step.KeyNormedHeads!;
        }

        backend.Rope(query, positions, cache.InverseFrequencies, _config.Rope.AttentionScaling);
        backend.Rope(key, positions, cache.InverseFrequencies, _config.Rope.AttentionScaling);

        var keys = cache.Keys[layer];
        var values = cache.Values[layer];
        backend.Copy(key, keys.Slice(start, n));
        backend.Copy(step.ValueHeads, values.Slice(start, n));
        backend.Attention(query, keys, values, start, _scale, step.AttentionHeads);
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
    }
}
