namespace Granary.Training;

public enum FineTuneType
{
    /// <summary>Frozen base weights (f32, bf16 or MLX-quantized: QLoRA) with trained low-rank adapters.</summary>
    Lora,

    /// <summary>Every weight trained, as an f32 copy; for small models.</summary>
    Full,

    /// <summary>
    /// DoRA (weight-decomposed LoRA, mlx_lm's "dora", peft's use_dora): the adapted weight W + scale B A is rescaled per
    /// output row to a trained magnitude m, y = m / ||W + scale B A||_row * (x W^T + scale x A^T B^T) + b, with the norm
    /// treated as a constant in the backward pass (as both do).
    /// </summary>
    Dora,
}

/// <summary>What a <see cref="TrainingModel"/> trains and how it keeps activations.</summary>
public sealed class FineTuneOptions
{
    public FineTuneType Type { get; set; } = FineTuneType.Lora;

    public LoraOptions Lora { get; set; } = new();

    /// <summary>Keep only each layer's input in the forward pass and recompute the layer in the backward pass.</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>
    /// Seed of the adapters' initial values (A uniform in +-1/sqrt(in), B zero, as mlx_lm; DoRA's magnitude starts at
    /// the row norms of W).
    /// </summary>
    public int Seed { get; set; }

    /// <summary>Cores a forward/backward pass uses (0: all); ranks that share a host divide them.</summary>
    public int Threads { get; set; }

    public void Validate()
    {
        if (Threads < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "Threads must be 0 (all cores) or positive.");
        }

        if (Type is FineTuneType.Lora or FineTuneType.Dora)
        {
            Lora.Validate();
        }
    }
}
