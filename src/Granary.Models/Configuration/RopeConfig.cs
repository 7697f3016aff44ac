namespace Granary.Models.Configuration;

/// <summary>How rotary position embedding frequencies are derived, from "rope_parameters" or "rope_theta"/"rope_scaling".</summary>
public sealed class RopeConfig
{
    public const string DefaultType = "default";
    public const string LinearType = "linear";
    public const string Llama3Type = "llama3";

    public RopeConfig(
        string type,
        double theta,
        double factor = 1.0,
        double lowFrequencyFactor = 1.0,
        double highFrequencyFactor = 4.0,
        int originalMaxPositionEmbeddings = 8192)
    {
        Type = type;
        Theta = theta;
        Factor = factor;
        LowFrequencyFactor = lowFrequencyFactor;
        HighFrequencyFactor = highFrequencyFactor;
        OriginalMaxPositionEmbeddings = originalMaxPositionEmbeddings;
    }

    /// <summary>"default", "linear" or "llama3".</summary>
    public string Type { get; }

    public double Theta { get; }

    /// <summary>Scaling factor of "linear" and "llama3".</summary>
    public double Factor { get; }

    public double LowFrequencyFactor { get; }

    public double HighFrequencyFactor { get; }

    public int OriginalMaxPositionEmbeddings { get; }

    /// <summary>Multiplier of cos and sin; 1 for every supported type.</summary>
    public float AttentionScaling => 1.0f;

    /// <summary>
    /// inv_freq[i] for i in [0, headDim/2), in f32 arithmetic as transformers computes it, so positions far into the
    /// sequence get the same angles: 1 / theta^((2i as f32) / headDim), then the type's scaling.
    /// </summary>
    public float[] ComputeInverseFrequencies(int headDim)
    {
        if (headDim <= 0 || headDim % 2 != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(headDim), headDim, "Rotary head dimension must be positive and even.");
        }

        var inverse = new float[headDim / 2];
        var theta = (float)Theta;
        for (var i = 0; i < inverse.Length; i++)
        {
            var exponent = (float)(2 * i) / headDim;
            inverse[i] = 1.0f / MathF.Pow(theta, exponent);
        }

        switch (Type)
        {
            case DefaultType:
                break;
            case LinearType:
                for (var i = 0; i < inverse.Length; i++)
                {
                    inverse[i] /= (float)Factor;
                }

                break;
            case Llama3Type:
                ApplyLlama3Scaling(inverse);
                break;
            default:
                throw new InvalidOperationException($"Unsupported rope type '{Type}'.");
        }

        return inverse;
    }

    // Low frequencies (long wavelengths) are divided by the factor, high ones kept, and the band between blended.
    private void ApplyLlama3Scaling(float[] inverse)
    {
        var factor = (float)Factor;
        var low = (float)LowFrequencyFactor;
        var high = (float)HighFrequencyFactor;
        var oldContext = (float)OriginalMaxPositionEmbeddings;
        var lowFrequencyWavelength = oldContext / low;
        var highFrequencyWavelength = oldContext / high;
        for (var i = 0; i < inverse.Length; i++)
        {
            var wavelength = 2 * MathF.PI / inverse[i];
            var scaled = wavelength > lowFrequencyWavelength ? inverse[i] / factor : inverse[i];
            if (wavelength >= highFrequencyWavelength && wavelength <= lowFrequencyWavelength)
            {
                var smooth = ((oldContext / wavelength) - low) / (high - low);
                scaled = ((1 - smooth) * scaled / factor) + (smooth * scaled);
            }

            inverse[i] = scaled;
        }
    }
}
