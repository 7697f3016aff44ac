using Granary.Tensors;

namespace Granary.Models.Safetensors;

/// <summary>One tensor entry of a safetensors header.</summary>
public sealed class SafetensorsTensorInfo
{
    public SafetensorsTensorInfo(string name, DType dtype, int[] shape, long dataOffset, long byteLength)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        DataOffset = dataOffset;
        ByteLength = byteLength;
    }

    public string Name { get; }

    public DType DType { get; }

    public IReadOnlyList<int> Shape { get; }

    /// <summary>Offset of the first byte relative to the start of the data section (after the header).</summary>
    public long DataOffset { get; }

    public long ByteLength { get; }

    public long ElementCount => Tensor.ShapeElementCount(Shape.ToArray());

    public override string ToString() => $"{Name}: {DType.ToSafetensorsName()}[{string.Join(", ", Shape)}]";
}
