namespace Granary.Training.Tests;

/// <summary>Adapter settings and values for tests that need adapters away from their (zero-effect) start.</summary>
internal static class TestAdapters
{
    /// <summary>Attention, the Qwen3-MoE router and every expert's projections (the keys of qwen3_moe_experts).</summary>
    public static readonly string[] MixtureKeys =
    [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate", "mlp.experts.gate_proj", "mlp.experts.up_proj", "mlp.experts.down_proj",
    ];

    /// <summary>B drawn in +-0.05 (A keeps its initial draw) and DoRA magnitudes moved by up to 10%, from a seed.</summary>
    public static void Randomize(TrainingModel model, int seed)
    {
        var random = new Random(seed);
        foreach (var linear in model.AdaptedLinears.Values.OrderBy(l => l.Name, StringComparer.Ordinal))
        {
            var lora = linear.Lora!;
            foreach (ref var b in lora.B.Value.AsSpan())
            {
                b = ((random.NextSingle() * 2) - 1) * 0.05f;
            }

            if (lora.Magnitude is { } magnitude)
            {
                foreach (ref var m in magnitude.Value.AsSpan())
                {
                    m *= 1 + (((random.NextSingle() * 2) - 1) * 0.1f);
                }
            }
        }
    }
}
