using Granary.Models.Configuration;
using Granary.Models.Safetensors;
using Granary.Models.Sharding;
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
    /// <paramref name="hasBias"/>; only the part <paramref name="slice"/> names is read (a row slice is mapped in place,
    /// a column slice copied).
    /// </summary>
    public LinearWeight Linear(string modulePath, int outFeatures, int inFeatures, bool hasBias, LinearSlice slice) =>
        Source(modulePath, outFeatures, inFeatures, hasBias, stacked: null).Take(_backend, slice, dequantizeUnaligned: true);

    public LinearWeight Linear(string modulePath, int outFeatures, int inFeatures, bool hasBias) =>
        Linear(modulePath, outFeatures, inFeatures, hasBias, LinearSlice.Whole);

    /// <summary>
    /// The experts in <paramref name="held"/> of <paramref name="count"/> linear weights stored stacked as
    /// [count, out, in] under one module (the mlx-lm layout of MoE experts, "switch_mlp"); null for the others.
    /// Each held expert maps only its own rows of the stacked tensors.
    /// </summary>
    public LinearWeight?[] StackedLinear(string modulePath, int count, int outFeatures, int inFeatures, ShardRange held)
    {
        var source = Source(modulePath, outFeatures, inFeatures, hasBias: false, stacked: count);
        var experts = new LinearWeight?[count];
        try
        {
            for (var e = held.Start; e < held.End; e++)
            {
                experts[e] = source.Take(_backend, LinearSlice.Outputs(new ShardRange(e * outFeatures, outFeatures)), dequantizeUnaligned: false);
            }

            return experts;
        }
        catch
        {
            foreach (var expert in experts)
            {
                expert?.Dispose();
            }

            throw;
        }
    }

    // A stacked module is read as one [count * out, in] matrix so an expert is a run of its rows.
    private LinearSource Source(string modulePath, int outFeatures, int inFeatures, bool hasBias, int? stacked)
    {
        var bias = hasBias ? Matrix(modulePath + ".bias", [outFeatures], requireFloat: true) : (HostMatrix?)null;
        var prefix = stacked is { } n ? new[] { n } : [];
        var rows = outFeatures * (stacked ?? 1);
        if (!_checkpoint.Contains(modulePath + ".scales"))
        {
            return LinearSource.Dense(modulePath, Matrix(modulePath + ".weight", [.. prefix, outFeatures, inFeatures], requireFloat: true, rows: rows), bias);
        }

        var (_, spec, groups) = QuantizationOf(modulePath, inFeatures);
        var packed = inFeatures * spec.Bits / 32;
        return LinearSource.Quantized(
            modulePath,
            Matrix(modulePath + ".weight", [.. prefix, outFeatures, packed], requireFloat: false, DType.U32, rows),
            Matrix(modulePath + ".scales", [.. prefix, outFeatures, groups], requireFloat: true, rows: rows),
            Matrix(modulePath + ".biases", [.. prefix, outFeatures, groups], requireFloat: true, rows: rows),
            spec.Bits,
            spec.GroupSize,
            bias);
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

    /// <summary>A checked tensor as a [rows, last dimension] matrix (a vector is [length, 1]).</summary>
    private HostMatrix Matrix(string name, int[] expectedShape, bool requireFloat, DType? requiredDType = null, int? rows = null)
    {
        var (file, info) = Check(name, expectedShape, requireFloat, requiredDType);
        var columns = expectedShape.Length == 1 ? 1 : expectedShape[^1];
        return new HostMatrix(file.GetRegion(info), info.DType, rows ?? expectedShape[0], columns, mappable: true);
    }

    private Tensor Map(string name, int[] expectedShape, bool requireFloat, DType? requiredDType = null)
    {
        var (file, info) = Check(name, expectedShape, requireFloat, requiredDType);
        return _backend.Map(file.GetRegion(info), info.DType, expectedShape);
    }

    private (SafetensorsFile File, SafetensorsTensorInfo Info) Check(string name, int[] expectedShape, bool requireFloat, DType? requiredDType)
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

        return (file, info);
    }
}
