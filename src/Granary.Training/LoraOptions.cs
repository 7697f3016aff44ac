namespace Granary.Training;

/// <summary>
/// Low-rank adapters: y = W x + scale * B A dropout(x), with A [rank, in] and B [out, rank].
/// <see cref="Scale"/> follows mlx_lm's "scale" (the multiplier itself); peft's lora_alpha corresponds to
/// scale = alpha / rank (see <see cref="FromAlpha"/>).
/// </summary>
public sealed class LoraOptions
{
    /// <summary>mlx_lm's default projections: every linear of attention and the MLP.</summary>
    public static readonly IReadOnlyList<string> DefaultKeys =
    [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ];

    public int Rank { get; set; } = 8;

    public float Scale { get; set; } = 20.0f;

    public float Dropout { get; set; }

    /// <summary>
    /// Module paths relative to a layer ("self_attn.q_proj"); adapters go on the linears they name. In a Qwen3-MoE
    /// layer "mlp.gate_proj" (or "mlp.experts.gate_proj", experts only) reaches that projection of every expert, each
    /// expert with its own adapter, and "mlp.gate" is the router.
    /// </summary>
    public IReadOnlyList<string> Keys { get; set; } = DefaultKeys;

    /// <summary>How many final layers get adapters (mlx_lm --num-layers); -1 for all.</summary>
    public int LayerCount { get; set; } = -1;

    public static float FromAlpha(float alpha, int rank) => alpha / rank;

    public void Validate()
    {
        if (Rank <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Rank), Rank, "LoRA rank must be positive.");
        }

        if (!float.IsFinite(Scale))
        {
            throw new ArgumentOutOfRangeException(nameof(Scale), Scale, "LoRA scale must be finite.");
        }

        if (Dropout is < 0 or >= 1)
        {
            throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "LoRA dropout must be in [0, 1).");
        }

        if (Keys.Count == 0)
        {
            throw new ArgumentException("At least one LoRA key (projection) is needed.", nameof(Keys));
        }

        if (LayerCount is 0 or < -1)
        {
            throw new ArgumentOutOfRangeException(nameof(LayerCount), LayerCount, "Layer count must be positive or -1 (all).");
        }
    }
}
