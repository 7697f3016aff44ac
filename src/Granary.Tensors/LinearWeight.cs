using Granary.Tensors.Cpu;

namespace Granary.Tensors;

/// <summary>
/// The weight of a linear layer y = x W^T (+ b), stored [outFeatures, inFeatures] as in Hugging Face checkpoints.
/// Either dense (<see cref="DenseWeight"/>) or MLX affine-quantized (<see cref="QuantizedWeight"/>).
/// </summary>
public abstract class LinearWeight : IDisposable
{
    protected LinearWeight(int outFeatures, int inFeatures, Tensor? bias)
    {
        if (bias is not null && (bias.Rank != 1 || bias.Shape[0] != outFeatures))
        {
            throw new ArgumentException($"Bias of shape [{string.Join(", ", bias.Shape)}] does not match {outFeatures} output features.");
        }

        OutFeatures = outFeatures;
        InFeatures = inFeatures;
        Bias = bias;
    }

    public int OutFeatures { get; }

    public int InFeatures { get; }

    public Tensor? Bias { get; }

    /// <summary>Bytes read from memory for one pass over the weight (roofline accounting).</summary>
    public abstract long WeightBytes { get; }

    public virtual void Dispose() => Bias?.Dispose();
}

/// <summary>A dense weight of dtype f32, f16 or bf16, shape [out, in].</summary>
public sealed class DenseWeight : LinearWeight
{
    public DenseWeight(Tensor weight, Tensor? bias = null)
        : base(RequireMatrix(weight).Shape[0], weight.Shape[1], bias)
    {
        if (!weight.DType.IsFloatingPoint())
        {
            throw new ArgumentException($"Dense weight must be floating point, got {weight.DType}.");
        }

        Weight = weight;
    }

    public Tensor Weight { get; }

    public override long WeightBytes => Weight.ByteLength + (Bias?.ByteLength ?? 0);

    public override void Dispose()
    {
        Weight.Dispose();
        base.Dispose();
    }

    private static Tensor RequireMatrix(Tensor t) =>
        t.Rank == 2 ? t : throw new ArgumentException($"Dense weight must be 2-D, got [{string.Join(", ", t.Shape)}].");
}

/// <summary>
/// MLX affine quantization: w = scale * q + bias per group of <see cref="GroupSize"/> consecutive input features.
/// <see cref="Codes"/> is u32 [out, in * bits / 32] with codes packed least-significant bits first;
/// <see cref="Scales"/> and <see cref="Biases"/> are [out, in / groupSize] in f16, bf16 or f32.
/// </summary>
public sealed class QuantizedWeight : LinearWeight
{
    public QuantizedWeight(Tensor codes, Tensor scales, Tensor biases, int bits, int groupSize, Tensor? bias = null)
        : base(codes.Shape[0], checked(codes.Shape[1] * 32 / bits), bias)
    {
        if (bits is not (4 or 8))
        {
            throw new ArgumentException($"Only 4- and 8-bit MLX quantization is supported, got {bits} bits.");
        }

        if (groupSize is not (32 or 64 or 128))
        {
            throw new ArgumentException($"Group size must be 32, 64 or 128, got {groupSize}.");
        }

        if (codes.DType != DType.U32 || codes.Rank != 2)
        {
            throw new ArgumentException($"Quantized codes must be u32 [out, in*bits/32], got {codes}.");
        }

        var groups = InFeatures / groupSize;
        if (InFeatures % groupSize != 0
            || scales.Rank != 2 || scales.Shape[0] != OutFeatures || scales.Shape[1] != groups
            || biases.Rank != 2 || biases.Shape[0] != OutFeatures || biases.Shape[1] != groups)
        {
            throw new ArgumentException(
                $"Scales {scales} / biases {biases} do not match [{OutFeatures}, {groups}] for codes {codes} with group size {groupSize}.");
        }

        Codes = codes;
        Scales = scales;
        Biases = biases;
        Bits = bits;
        GroupSize = groupSize;

        // Made here, once, so the first decode step does not pay for it and the copy lives exactly as long as the weight.
        CpuDecodeLayout = codes.Backend is CpuBackend cpu ? PackedQuantizedRows.TryCreate(cpu, this) : null;
    }

    public Tensor Codes { get; }

    public Tensor Scales { get; }

    public Tensor Biases { get; }

    public int Bits { get; }

    public int GroupSize { get; }

    /// <summary>The rows repacked for the CPU backend's 4-bit decode loop, when the weight lives there and that loop runs.</summary>
    internal PackedQuantizedRows? CpuDecodeLayout { get; }

    public override long WeightBytes => Codes.ByteLength + Scales.ByteLength + Biases.ByteLength + (Bias?.ByteLength ?? 0);

    public override void Dispose()
    {
        CpuDecodeLayout?.Dispose();
        Codes.Dispose();
        Scales.Dispose();
        Biases.Dispose();
        base.Dispose();
    }
}
