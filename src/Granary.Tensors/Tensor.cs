namespace Granary.Tensors;

/// <summary>
/// Storage owned by one compute backend: host memory for the CPU backend, device memory for a GPU.
/// Callers never dereference it; they hand tensors back to the backend that made them.
/// </summary>
public abstract class DeviceBuffer : IDisposable
{
    protected DeviceBuffer(IComputeBackend backend, long byteLength)
    {
        Backend = backend;
        ByteLength = byteLength;
    }

    public IComputeBackend Backend { get; }

    public long ByteLength { get; }

    public bool IsDisposed { get; private set; }

    public void Dispose()
    {
        if (IsDisposed)
        {
            return;
        }

        IsDisposed = true;
        Release();
        GC.SuppressFinalize(this);
    }

    protected abstract void Release();
}

/// <summary>
/// A dense, row-major view over a <see cref="DeviceBuffer"/>: element type, shape and byte offset.
/// Views share the buffer; disposing the owning tensor releases it.
/// </summary>
public sealed class Tensor : IDisposable
{
    private readonly bool _ownsBuffer;

    public Tensor(DeviceBuffer buffer, DType dtype, int[] shape, long byteOffset = 0, bool ownsBuffer = true)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        ArgumentNullException.ThrowIfNull(shape);
        foreach (var d in shape)
        {
            if (d < 0)
            {
                throw new ArgumentException($"Negative dimension in shape [{string.Join(", ", shape)}].", nameof(shape));
            }
        }

        Buffer = buffer;
        DType = dtype;
        Shape = shape;
        ByteOffset = byteOffset;
        _ownsBuffer = ownsBuffer;
        ElementCount = ShapeElementCount(shape);
        if (byteOffset < 0 || byteOffset + ByteLength > buffer.ByteLength)
        {
            throw new ArgumentException(
                $"Tensor of {ByteLength} bytes at offset {byteOffset} does not fit in a buffer of {buffer.ByteLength} bytes.");
        }
    }

    public DeviceBuffer Buffer { get; }

    public IComputeBackend Backend => Buffer.Backend;

    public DType DType { get; }

    public int[] Shape { get; }

    public long ByteOffset { get; }

    public long ElementCount { get; }

    public long ByteLength => ElementCount * DType.SizeInBytes();

    public int Rank => Shape.Length;

    /// <summary>Size of the last dimension (the contiguous one).</summary>
    public int Columns => Shape.Length == 0 ? 1 : Shape[^1];

    /// <summary>Product of all dimensions but the last.</summary>
    public long Rows => Columns == 0 ? 0 : ElementCount / Columns;

    public int Dim(int axis) => Shape[axis < 0 ? Shape.Length + axis : axis];

    /// <summary>A view with another shape over the same elements.</summary>
    public Tensor Reshape(params int[] shape)
    {
        if (ShapeElementCount(shape) != ElementCount)
        {
            throw new ArgumentException(
                $"Cannot reshape [{string.Join(", ", Shape)}] to [{string.Join(", ", shape)}]: element counts differ.");
        }

        return new Tensor(Buffer, DType, shape, ByteOffset, ownsBuffer: false);
    }

    /// <summary>A view of rows [start, start+count) of the outermost dimension.</summary>
    public Tensor Slice(int start, int count)
    {
        if (Shape.Length == 0 || start < 0 || count < 0 || start + count > Shape[0])
        {
            throw new ArgumentOutOfRangeException(nameof(start), $"Rows [{start}, {start + count}) are outside [0, {(Shape.Length == 0 ? 0 : Shape[0])}).");
        }

        var shape = (int[])Shape.Clone();
        shape[0] = count;
        var rowBytes = Shape[0] == 0 ? 0 : ByteLength / Shape[0];
        return new Tensor(Buffer, DType, shape, ByteOffset + (start * rowBytes), ownsBuffer: false);
    }

    public override string ToString() => $"{DType}[{string.Join(", ", Shape)}] on {Backend.Name}";

    public void Dispose()
    {
        if (_ownsBuffer)
        {
            Buffer.Dispose();
        }
    }

    public static long ShapeElementCount(ReadOnlySpan<int> shape)
    {
        long n = 1;
        foreach (var d in shape)
        {
            n *= d;
        }

        return n;
    }
}
