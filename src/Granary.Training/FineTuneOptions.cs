namespace Granary.Training;

public enum FineTuneType
{
    /// <summary>Frozen base weights (f32, bf16 or MLX-quantized: QLoRA) with trained low-rank adapters.</summary>
    Lora,

    /// <summary>Every weight trained, as an f32 copy; for small models.</summary>
    Full,
}

/// <summary>What a <see cref="TrainingModel"/> trains and how it keeps activations.</summary>
public sealed class FineTuneOptions
{
    public FineTuneType Type { get; set; } = FineTuneType.Lora;

    public LoraOptions Lora { get; set; } = new();

    /// <summary>Keep only each layer's input in the forward pass and recompute the layer in the backward pass.</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>Seed of the adapters' initial values (A uniform in +-1/sqrt(in), B zero, as mlx_lm).</summary>
    public int Seed { get; set; }

    public void Validate()
    {
        if (Type == FineTuneType.Lora)
        {
            Lora.Validate();
        }
    }
}
