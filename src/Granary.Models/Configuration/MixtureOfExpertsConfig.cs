namespace Granary.Models.Configuration;

/// <summary>Sparse feed-forward settings (qwen3_moe): which layers route, and how.</summary>
public sealed class MixtureOfExpertsConfig
{
    public MixtureOfExpertsConfig(
        int expertCount,
        int expertsPerToken,
        int expertIntermediateSize,
        bool normalizeTopKProbabilities,
        int decoderSparseStep,
        IReadOnlyCollection<int> mlpOnlyLayers)
    {
        ExpertCount = expertCount;
        ExpertsPerToken = expertsPerToken;
        ExpertIntermediateSize = expertIntermediateSize;
        NormalizeTopKProbabilities = normalizeTopKProbabilities;
        DecoderSparseStep = decoderSparseStep;
        MlpOnlyLayers = mlpOnlyLayers;
    }

    public int ExpertCount { get; }

    public int ExpertsPerToken { get; }

    public int ExpertIntermediateSize { get; }

    /// <summary>Renormalise the top-k router probabilities to sum to one ("norm_topk_prob").</summary>
    public bool NormalizeTopKProbabilities { get; }

    public int DecoderSparseStep { get; }

    /// <summary>Layers that keep a dense MLP.</summary>
    public IReadOnlyCollection<int> MlpOnlyLayers { get; }

    /// <summary>Whether <paramref name="layer"/> uses experts, by the transformers rule.</summary>
    public bool IsSparseLayer(int layer) =>
        !MlpOnlyLayers.Contains(layer) && ExpertCount > 0 && (layer + 1) % DecoderSparseStep == 0;
}
