using System.Runtime.InteropServices;
using Granary.Tensors;

namespace Granary.Models.Sharding;

/// <summary>Which part of a linear layer one rank holds.</summary>
internal readonly record struct LinearSlice(ShardStrategy? Strategy, ShardRange[] Ranges, bool KeepBias)
{
    public static LinearSlice Whole { get; } = new(null, [], KeepBias: true);

    /// <summary>Output features in <paramref name="ranges"/>, concatenated (one range maps in place; several are copied).</summary>
    public static LinearSlice Outputs(params ShardRange[] ranges) => new(ShardStrategy.AllToSharded, ranges, KeepBias: true);

    /// <summary>Input features in <paramref name="range"/>; the bias goes to the one rank that adds it to the sum.</summary>
    public static LinearSlice Inputs(ShardRange range, bool keepBias) => new(ShardStrategy.ShardedToAll, [range], keepBias);
}

/// <summary>
/// The host-side parts of one linear layer (a dense weight, or MLX codes, scales and biases, plus an optional bias)
/// from which the slice a rank holds is made on its backend.
/// </summary>
internal sealed class LinearSource
{
    private LinearSource(string name, int outFeatures, int inFeatures, HostMatrix? weight, HostMatrix? codes, HostMatrix? scales, HostMatrix? biases, int bits, int groupSize, HostMatrix? bias)
    {
        Name = name;
        OutFeatures = outFeatures;
        InFeatures = inFeatures;
        Weight = weight;
        Codes = codes;
        Scales = scales;
        Biases = biases;
        Bits = bits;
        GroupSize = groupSize;
        Bias = bias;
    }

    public string Name { get; }

    public int OutFeatures { get; }

    public int InFeatures { get; }

    public bool IsQuantized => Codes is not null;

    public int GroupSize { get; }

    private HostMatrix? Weight { get; }

    private HostMatrix? Codes { get; }

    private HostMatrix? Scales { get; }

    private HostMatrix? Biases { get; }

    private int Bits { get; }

    /// <summary>The bias as an [out, 1] matrix, so output slices are row slices.</summary>
    private HostMatrix? Bias { get; }

    public static LinearSource Dense(string name, HostMatrix weight, HostMatrix? bias) =>
        new(name, checked((int)weight.Rows), weight.Columns, weight, null, null, null, 0, 0, bias);

    public static LinearSource Quantized(string name, HostMatrix codes, HostMatrix scales, HostMatrix biases, int bits, int groupSize, HostMatrix? bias) =>
        new(name, checked((int)codes.Rows), codes.Columns * 32 / bits, null, codes, scales, biases, bits, groupSize, bias);

    /// <summary>
    /// This rank's slice as a weight on <paramref name="backend"/>. An input slice of a quantized layer must start and
    /// end on quantization group boundaries; when it does not, <paramref name="dequantizeUnaligned"/> makes it a dense
    /// f32 slice (exact: the same values the kernels would dequantize) instead of failing.
    /// </summary>
    public LinearWeight Take(IComputeBackend backend, LinearSlice slice, bool dequantizeUnaligned)
    {
        var loaded = new List<Tensor>(4);
        try
        {
            return slice.Strategy switch
            {
                null => TakeOutputs(backend, [new ShardRange(0, OutFeatures)], keepBias: true, loaded),
                ShardStrategy.AllToSharded => TakeOutputs(backend, slice.Ranges, keepBias: true, loaded),
                _ => TakeInputs(backend, slice.Ranges[0], slice.KeepBias, dequantizeUnaligned, loaded),
            };
        }
        catch
        {
            loaded.ForEach(t => t.Dispose());
            throw;
        }
    }

    private LinearWeight TakeOutputs(IComputeBackend backend, ShardRange[] ranges, bool keepBias, List<Tensor> loaded)
    {
        foreach (var range in ranges)
        {
            if (range.Start < 0 || range.Count < 1 || range.End > OutFeatures)
            {
                throw new ArgumentOutOfRangeException(nameof(ranges), $"{Name}: output features [{range.Start}, {range.End}) are outside [0, {OutFeatures}).");
            }
        }

        var count = ranges.Sum(r => r.Count);
        var bias = keepBias && Bias is { } b ? Keep(loaded, Rows(backend, b, ranges, [count])) : null;
        if (Weight is { } weight)
        {
            return new DenseWeight(Keep(loaded, Rows(backend, weight, ranges, [count, InFeatures])), bias);
        }

        var codes = Keep(loaded, Rows(backend, Codes!.Value, ranges, [count, Codes.Value.Columns]));
        var scales = Keep(loaded, Rows(backend, Scales!.Value, ranges, [count, Scales.Value.Columns]));
        var biases = Keep(loaded, Rows(backend, Biases!.Value, ranges, [count, Biases.Value.Columns]));
        return new QuantizedWeight(codes, scales, biases, Bits, GroupSize, bias);
    }

    private LinearWeight TakeInputs(IComputeBackend backend, ShardRange range, bool keepBias, bool dequantizeUnaligned, List<Tensor> loaded)
    {
        if (range.Start < 0 || range.Count < 1 || range.End > InFeatures)
        {
            throw new ArgumentOutOfRangeException(nameof(range), $"{Name}: input features [{range.Start}, {range.End}) are outside [0, {InFeatures}).");
        }

        var bias = keepBias && Bias is { } b ? Keep(loaded, b.TakeRows(backend, 0, OutFeatures, [OutFeatures])) : null;
        if (Weight is { } weight)
        {
            return new DenseWeight(Keep(loaded, weight.TakeColumns(backend, range.Start, range.Count, [OutFeatures, range.Count])), bias);
        }

        if (range.Start % GroupSize != 0 || range.Count % GroupSize != 0)
        {
            if (!dequantizeUnaligned)
            {
                throw new ArgumentException(
                    $"{Name}: input features [{range.Start}, {range.End}) do not fall on the quantization group boundaries (group size {GroupSize}); " +
                    $"the {InFeatures} input features cannot be split this way.");
            }

            return new DenseWeight(Keep(loaded, Dequantize(backend, range)), bias);
        }

        var codesPerGroup = GroupSize * Bits / 32;
        var (firstGroup, groups) = (range.Start / GroupSize, range.Count / GroupSize);
        var codes = Keep(loaded, Codes!.Value.TakeColumns(backend, firstGroup * codesPerGroup, groups * codesPerGroup, [OutFeatures, groups * codesPerGroup]));
        var scales = Keep(loaded, Scales!.Value.TakeColumns(backend, firstGroup, groups, [OutFeatures, groups]));
        var biases = Keep(loaded, Biases!.Value.TakeColumns(backend, firstGroup, groups, [OutFeatures, groups]));
        return new QuantizedWeight(codes, scales, biases, Bits, GroupSize, bias);
    }

    private Tensor Dequantize(IComputeBackend backend, ShardRange range)
    {
        var (codes, scales, biases) = (Codes!.Value, Scales!.Value, Biases!.Value);
        var mask = (1u << Bits) - 1;
        var values = new float[(long)OutFeatures * range.Count];
        for (var row = 0; row < OutFeatures; row++)
        {
            var words = MemoryMarshal.Cast<byte, uint>(codes.Row(row));
            for (var i = 0; i < range.Count; i++)
            {
                var column = range.Start + i;
                var bit = column * Bits;
                var code = (words[bit / 32] >> (bit % 32)) & mask;
                var group = column / GroupSize;
                values[((long)row * range.Count) + i] = (scales.ReadSingle(row, group) * code) + biases.ReadSingle(row, group);
            }
        }

        return backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, OutFeatures, range.Count);
    }

    private static Tensor Rows(IComputeBackend backend, HostMatrix matrix, ShardRange[] ranges, int[] shape)
    {
        if (ranges.Length == 1)
        {
            return matrix.TakeRows(backend, ranges[0].Start, ranges[0].Count, shape);
        }

        var count = ranges[0].Count;
        if (ranges.Any(r => r.Count != count))
        {
            throw new ArgumentException("Gathered output ranges must have equal lengths.", nameof(ranges));
        }

        return matrix.GatherRows(backend, ranges.Select(r => (long)r.Start).ToArray(), count, shape);
    }

    private static Tensor Keep(List<Tensor> loaded, Tensor tensor)
    {
        loaded.Add(tensor);
        return tensor;
    }
}
