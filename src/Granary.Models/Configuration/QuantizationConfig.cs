namespace Granary.Models.Configuration;

/// <summary>Bits and group size of one MLX affine-quantized module.</summary>
public sealed record QuantizationSpec(int Bits, int GroupSize);

/// <summary>
/// MLX affine quantization from "quantization" (or "quantization_config"): a global {"group_size", "bits"} plus
/// optional per-module overrides keyed by module path, each either its own {"group_size", "bits"} or false (kept dense).
/// </summary>
public sealed class QuantizationConfig
{
    private readonly IReadOnlyDictionary<string, QuantizationSpec?> _overrides;

    public QuantizationConfig(QuantizationSpec global, IReadOnlyDictionary<string, QuantizationSpec?>? overrides = null)
    {
        Global = global;
        _overrides = overrides ?? new Dictionary<string, QuantizationSpec?>();
    }

    public QuantizationSpec Global { get; }

    /// <summary>Per-module settings; a null value means the module is not quantized.</summary>
    public IReadOnlyDictionary<string, QuantizationSpec?> Overrides => _overrides;

    /// <summary>The settings of the module at <paramref name="modulePath"/> ("model.layers.0.mlp.gate"), or null when it stays dense.</summary>
    public QuantizationSpec? For(string modulePath) =>
        _overrides.TryGetValue(modulePath, out var spec) ? spec : Global;
}
