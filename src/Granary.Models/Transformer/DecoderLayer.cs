using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(...)). A unit of placement for sharding.</summary>
public sealed class DecoderLayer : IDisposable
{
    private readonly float _epsilon;
    private readonly ModelPartition _partition;

    internal DecoderLayer(int index, float epsilon, ModelPartition partition, Tensor inputNorm, SelfAttention attention, Tensor postAttentionNorm, FeedForward feedForward)
    {
        Index = index;
        _epsilon = epsilon;
        _partition = partition;
        InputNorm = inputNorm;
        Attention = attention;
        PostAttentionNorm = postAttentionNorm;
        FeedForward = feedForward;
    }

    public int Index { get; }

    public Tensor InputNorm { get; }

    public SelfAttention Attention { get; }

    public Tensor PostAttentionNorm { get; }

    public FeedForward FeedForward { get; }

    public long WeightBytesPerToken =>
        InputNorm.ByteLength + Attention.WeightBytes + PostAttentionNorm.ByteLength + FeedForward.WeightBytesPerToken;

    /// <summary>Bytes of weights this rank holds for the layer.</summary>
    public long WeightBytesHeld =>
        InputNorm.ByteLength + Attention.WeightBytes + PostAttentionNorm.ByteLength + FeedForward.WeightBytesHeld;

    /// <summary>Epsilon of the layer's RMS norms.</summary>
    internal float Epsilon => _epsilon;

    /// <summary>True when q|k|v and gate|up are held stacked, as the fused decode step needs them.</summary>
    internal bool IsStacked => Attention.QueryKeyValue is not null && FeedForward is DenseFeedForward { GateUp: not null };

    /// <param name="stack">The backend to stack q|k|v and gate|up on for its fused decode step, or null to load them apart.</param>
    internal static DecoderLayer Load(WeightLoader weights, ModelConfig config, int index, ModelPartition partition, IComputeBackend? stack = null)
    {
        var prefix = $"model.layers.{index}.";
        var loaded = new List<IDisposable>();
        try
        {
            var inputNorm = loaded.Keep(weights.Vector(prefix + "input_layernorm.weight", config.HiddenSize));
            var attention = loaded.Keep(SelfAttention.Load(weights, config, prefix + "self_attn.", partition, stack));
            var postNorm = loaded.Keep(weights.Vector(prefix + "post_attention_layernorm.weight", config.HiddenSize));
            FeedForward feedForward = config.MixtureOfExperts is { } moe && moe.IsSparseLayer(index)
                ? MixtureOfExpertsFeedForward.Load(weights, moe, prefix + "mlp.", config.HiddenSize, partition.Experts)
                : DenseFeedForward.Load(
                    weights, prefix + "mlp.", config.HiddenSize, config.IntermediateSize, config.MlpBias,
                    partition.TensorSize == 1 ? null : partition.Intermediate, keepDownBias: partition.TensorRank == 0, stack);
            return new DecoderLayer(index, config.RmsNormEpsilon, partition, inputNorm, attention, postNorm, feedForward);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>
    /// Reads the residual stream of every row of the pass from hidden[current] and leaves it there again (via
    /// hidden[1 - current]); rows may belong to different sequences (see <see cref="PassLayout"/>). Under tensor
    /// parallelism attention and MLP each leave a partial sum: two all-sums per layer make it whole on every rank.
    /// </summary>
    internal void Forward(IComputeBackend backend, ForwardScratch.StepTensors step, ref int current, PassLayout pass)
    {
        backend.RmsNorm(step.Hidden[current], InputNorm, _epsilon, step.Normed);
        Attention.Forward(backend, step.Normed, step, pass, Index, step.Projected);
        _partition.AllSum(step.Projected);
        backend.Add(step.Hidden[current], step.Projected, step.Hidden[1 - current]);
        current = 1 - current;

        backend.RmsNorm(step.Hidden[current], PostAttentionNorm, _epsilon, step.Normed);
        FeedForward.Forward(backend, step.Normed, step, step.Projected);
        _partition.AllSum(step.Projected);
        backend.Add(step.Hidden[current], step.Projected, step.Hidden[1 - current]);
        current = 1 - current;
    }

    public void Dispose()
    {
        InputNorm.Dispose();
        Attention.Dispose();
        PostAttentionNorm.Dispose();
        FeedForward.Dispose();
    }
}
