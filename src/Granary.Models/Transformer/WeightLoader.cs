using Granary.Models.Configuration;
using Granary.Models.Safetensors;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>
/// Maps checkpoint tensors onto a backend by Hugging Face module path, checking dtype and shape against the config,
/// and recognising MLX-quantized modules ("X.weight" u32 codes with "X.scales" and "X.biases").
/// </summary>
internal sealed class WeightLoader
{
    private readonly SafetensorsCheckpoint _checkpoint;
    private readonly IComputeBackend _backend;
    private readonly QuantizationConfig? _quantization;
    private readonly string _configPath;

    public WeightLoader(SafetensorsCheckpoint checkpoint, IComputeBackend backend, QuantizationConfig? quantization, string configPath)
    {
        _checkpoint = checkpoint;
        _backend = backend;
        _quantization = quantization;
        _configPath = configPath;
    }

    public bool Contains(string name) => _checkpoint.Contains(name);

    /// <summary>A 1-D floating-point tensor such as a norm weight.</summary>
    public Tensor Vector(string name, int length) => Map(name, [length], requireFloat: true);

    /// <summary>
    /// The weight of module <paramref name="modulePath"/> (stored [out, in]), dense or quantized, with its bias when
    /// <paramref name="hasBias"/>.
    /// </summary>
    public LinearWeight Linear(string modulePath, int outFeatures, int inFeatures, bool hasBias)
    {
        var bias = hasBias ? Vector(modulePath + ".bias", outFeatures) : null;
        try
        {
            return _checkpoint.Contains(modulePath + ".scales")
                ? Quantized(modulePath, outFeatures, inFeatures, bias)
                : new DenseWeight(Map(modulePath + ".weight", [outFeatures, inFeatures], requireFloat: true), bias);
        }
        catch
        {
            bias?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <paramref name="count"/> linear weights stored stacked as [count, out, in] under one module (the mlx-lm layout
    /// of MoE experts, "switch_mlp"). Each weight is a view; the stacked tensors are added to <paramref name="owners"/>,
    /// which the caller disposes after the views.
    /// </summary>
    public LinearWeight[] StackedLinear(string modulePath, int count, int outFeatures, int inFeatures, List<IDisposable> owners)
    {
        if (!_checkpoint.Contains(modulePath + ".scales"))
        {
            var stacked = owners.Keep(Map(modulePath + ".weight", [count, outFeatures, inFeatures], requireFloat: true));
            return Enumerable.Range(0, count)
                .Select(e => (LinearWeight)new DenseWeight(stacked.Slice(e, 1).Reshape(outFeatures, inFeatures)))
                .ToArray();
        }

        var (file, spec, groups) = QuantizationOf(modulePath, inFeatures);
        var packed = inFeatures * spec.Bits / 32;
        var codes = owners.Keep(Map(modulePath + ".weight", [count, outFeatures, packed], requireFloat: false, DType.U32));
        var scales = owners.Keep(Map(modulePath + ".scales", [count, outFeatures, groups], requireFloat: true));
        var biases = owners.Keep(Map(modulePath + ".biases", [count, outFeatures, groups], requireFloat: true));
        return Enumerable.Range(0, count)
            .Select(e => (LinearWeight)new QuantizedWeight(
                codes.Slice(e, 1).Reshape(outFeatures, packed),
                scales.Slice(e, 1).Reshape(outFeatures, groups),
                biases.Slice(e, 1).Reshape(outFeatures, groups),
                spec.Bits,
                spec.GroupSize))
            .ToArray();
    }

    private (SafetensorsFile File, QuantizationSpec Spec, int Groups) QuantizationOf(string modulePath, int inFeatures)
    {
        var (file, _) = _checkpoint.GetTensor(modulePath + ".scales");
        var spec = _quantization?.For(modulePath) ?? throw new ModelLoadException(
            file.Path,
            modulePath + ".scales",
            _quantization is null
                ? $"The module is quantized but {_configPath} has no 'quantization' settings."
                : $"The module is quantized but {_configPath} marks it unquantized.");
        if (inFeatures * spec.Bits % 32 != 0 || inFeatures % spec.GroupSize != 0)
        {
            throw new ModelLoadException(
                file.Path, modulePath + ".weight", $"{inFeatures} input features cannot be packed at {spec.Bits} bits in groups of {spec.GroupSize}.");
        }

        return (file, spec, inFeatures / spec.GroupSize);
    }

    private QuantizedWeight Quantized(string modulePath, int outFeatures, int inFeatures, Tensor? bias)
    {
        var (_, spec, groups) = QuantizationOf(modulePath, inFeatures);
        var tensors = new List<Tensor>(3);
        try
        {
            tensors.Add(Map(modulePath + ".weight", [outFeatures, inFeatures * spec.Bits / 32], requireFloat: false, DType.U32));
            tensors.Add(Map(modulePath + ".scales", [outFeatures, groups], requireFloat: true));
            tensors.Add(Map(modulePath + ".biases", [outFeatures, groups], requireFloat: true));
            return new QuantizedWeight(tensors[0], tensors[1], tensors[2], spec.Bits, spec.GroupSize, bias);
        }
        catch
        {
            tensors.ForEach(t => t.Dispose());
            throw;
        }
    }

    private Tensor Map(string name, int[] expectedShape, bool requireFloat, DType? requiredDType = null)
    {
        var (file, info) = _checkpoint.GetTensor(name);
        if (requiredDType is { } required && info.DType != required)
        {
            throw new ModelLoadException(file.Path, name, $"Expected dtype {required.ToSafetensorsName()}, got {info.DType.ToSafetensorsName()}.");
        }

        if (requireFloat && !info.DType.IsFloatingPoint())
        {
            throw new ModelLoadException(file.Path, name, $"Expected a floating-point dtype (F32, F16, BF16), got {info.DType.ToSafetensorsName()}.");
        }

        if (!info.Shape.SequenceEqual(expectedShape))
        {
            throw new ModelLoadException(
                file.Path, name, $"Shape mismatch: expected [{string.Join(", ", expectedShape)}], got [{string.Join(", ", info.Shape)}].");
        }

        return _backend.Map(file.GetRegion(info), info.DType, expectedShape);
    }
}
