using Granary.Collectives;
using Granary.Tensors;

namespace Granary.Models.Sharding;

/// <summary>Splitting one linear layer over the ranks of a group (the counterpart of MLX's <c>shard_linear</c>).</summary>
public static class LinearSharding
{
    /// <summary>
    /// This rank's part of <paramref name="layer"/> under <paramref name="strategy"/>, split evenly over
    /// <paramref name="group"/>. The result owns a copy of its slice; <paramref name="layer"/> is left as it is.
    /// Quantized layers split on quantization group boundaries: the split dimension must divide into
    /// <c>group.Size</c> equal parts (and, for <see cref="ShardStrategy.ShardedToAll"/>, each part into whole groups).
    /// After a <see cref="ShardStrategy.ShardedToAll"/> layer the caller sums the partial outputs with
    /// <see cref="Group.AllSum(Tensor)"/>.
    /// </summary>
    public static LinearWeight ShardLinear(LinearWeight layer, ShardStrategy strategy, Group group)
    {
        ArgumentNullException.ThrowIfNull(layer);
        ArgumentNullException.ThrowIfNull(group);
        var (rank, size) = (group.Rank, group.Size);
        var slice = strategy switch
        {
            ShardStrategy.AllToSharded => LinearSlice.Outputs(EvenPart(layer.OutFeatures, size, rank, 1, "output features")),
            ShardStrategy.ShardedToAll => LinearSlice.Inputs(
                EvenPart(layer.InFeatures, size, rank, layer is QuantizedWeight q ? q.GroupSize : 1, "input features"), keepBias: rank == 0),
            _ => throw new ArgumentOutOfRangeException(nameof(strategy), strategy, "Unknown shard strategy."),
        };
        return HostCopy(layer).Take(BackendOf(layer), slice, dequantizeUnaligned: false);
    }

    private static ShardRange EvenPart(int features, int parts, int part, int unit, string what)
    {
        if (features % parts != 0 || features / parts % unit != 0)
        {
            throw new ArgumentException(unit == 1
                ? $"{features} {what} cannot be split evenly over {parts} ranks."
                : $"{features} {what} cannot be split evenly over {parts} ranks on quantization group boundaries (group size {unit}).");
        }

        return new ShardRange(features / parts * part, features / parts);
    }

    private static IComputeBackend BackendOf(LinearWeight layer) => layer switch
    {
        DenseWeight dense => dense.Weight.Backend,
        QuantizedWeight quantized => quantized.Codes.Backend,
        _ => throw new NotSupportedException($"Unknown weight type {layer.GetType().Name}."),
    };

    private static LinearSource HostCopy(LinearWeight layer)
    {
        var bias = layer.Bias is { } b ? Download(b, layer.OutFeatures, 1) : (HostMatrix?)null;
        return layer switch
        {
            DenseWeight dense => LinearSource.Dense("linear layer", Download(dense.Weight, dense.OutFeatures, dense.InFeatures), bias),
            QuantizedWeight quantized => LinearSource.Quantized(
                "quantized linear layer",
                Download(quantized.Codes, quantized.OutFeatures, quantized.Codes.Shape[1]),
                Download(quantized.Scales, quantized.OutFeatures, quantized.Scales.Shape[1]),
                Download(quantized.Biases, quantized.OutFeatures, quantized.Biases.Shape[1]),
                quantized.Bits,
                quantized.GroupSize,
                bias),
            _ => throw new NotSupportedException($"Unknown weight type {layer.GetType().Name}."),
        };
    }

    private static unsafe HostMatrix Download(Tensor tensor, int rows, int columns)
    {
        // Pinned so the matrix can point into it; it is only read while the slice is copied out.
        var bytes = GC.AllocateUninitializedArray<byte>(checked((int)tensor.ByteLength), pinned: true);
        tensor.Backend.Download(tensor, bytes);
        fixed (byte* pointer = bytes)
        {
            return new HostMatrix(new HostRegion(pointer, bytes.Length, bytes), tensor.DType, rows, columns, mappable: false);
        }
    }
}
