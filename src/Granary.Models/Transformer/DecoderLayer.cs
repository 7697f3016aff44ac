using Granary.Models.Configuration;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(...)). A unit of placement for sharding.</summary>
public sealed class DecoderLayer : IDisposable
{
    private readonly float _epsilon;

    internal DecoderLayer(int index, float epsilon, Tensor inputNorm, SelfAttention attention, Tensor postAttentionNorm, FeedForward feedForward)
    {
        Index = index;
        _epsilon = epsilon;
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

    internal static DecoderLayer Load(WeightLoader weights, ModelConfig config, int index)
    {
        var prefix = $"model.layers.{index}.";
        var loaded = new List<IDisposable>();
        try
        {
            var inputNorm = loaded.Keep(weights.Vector(prefix + "input_layernorm.weight", config.HiddenSize));
            var attention = loaded.Keep(SelfAttention.Load(weights, config, prefix + "self_attn."));
            var postNorm = loaded.Keep(weights.Vector(prefix + "post_attention_layernorm.weight", config.HiddenSize));
            FeedForward feedForward = config.MixtureOfExperts is { } moe && moe.IsSparseLayer(index)
                ? MixtureOfExpertsFeedForward.Load(weights, moe, prefix + "mlp.", config.HiddenSize)
                : DenseFeedForward.Load(weights, prefix + "mlp.", config.HiddenSize, config.IntermediateSize, config.MlpBias);
            return new DecoderLayer(index, config.RmsNormEpsilon, inputNorm, attention, postNorm, feedForward);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>Reads the residual stream from hidden[current] and leaves it there again (via hidden[1 - current]).</summary>
    internal void Forward(IComputeBackend backend, ForwardScratch.StepTensors step, ref int current, KvCache cache, Tensor positions)
    {
        backend.RmsNorm(step.Hidden[current], InputNorm, _epsilon, step.Normed);
        Attention.Forward(backend, step.Normed, step, cache, Index, positions, step.Projected);
        backend.Add(step.Hidden[current], step.Projected, step.Hidden[1 - current]);
        current = 1 - current;

        backend.RmsNorm(step.Hidden[current], PostAttentionNorm, _epsilon, step.Normed);
        FeedForward.Forward(backend, step.Normed, step, step.Projected);
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
