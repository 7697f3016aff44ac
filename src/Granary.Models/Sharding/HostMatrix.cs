using Granary.Tensors;

namespace Granary.Models.Sharding;

/// <summary>
/// A row-major matrix in host memory: a memory-mapped checkpoint tensor (which may be mapped in place) or a host copy
/// of a tensor (which is always copied). Rows are the outermost dimension, so a row slice is one contiguous byte range
/// while a column slice is strided and has to be gathered into a new buffer.
/// </summary>
internal readonly unsafe struct HostMatrix
{
    private readonly byte* _pointer;
    private readonly object _owner;
    private readonly bool _mappable;

    public HostMatrix(HostRegion region, DType dtype, long rows, int columns, bool mappable)
    {
        if (region.Length != rows * columns * dtype.SizeInBytes())
        {
            throw new ArgumentException($"A region of {region.Length} bytes does not hold {dtype}[{rows}, {columns}].", nameof(region));
        }

        _pointer = region.Pointer;
        _owner = region.Owner;
        _mappable = mappable;
        DType = dtype;
        Rows = rows;
        Columns = columns;
    }

    public DType DType { get; }

    public long Rows { get; }

    public int Columns { get; }

    public long RowBytes => (long)Columns * DType.SizeInBytes();

    public ReadOnlySpan<byte> Row(long row) => new(_pointer + (row * RowBytes), checked((int)RowBytes));

    /// <summary>Rows [start, start + count) shaped as <paramref name="shape"/>: mapped in place when possible, else copied.</summary>
    public Tensor TakeRows(IComputeBackend backend, long start, long count, int[] shape)
    {
        var region = new HostRegion(_pointer + (start * RowBytes), count * RowBytes, _owner);
        return _mappable
            ? backend.Map(region, DType, shape)
            : backend.Upload(new ReadOnlySpan<byte>(region.Pointer, checked((int)region.Length)), DType, shape);
    }

    /// <summary>Rows [start, start + count) for each start, concatenated (a copy: the blocks are not contiguous).</summary>
    public Tensor GatherRows(IComputeBackend backend, IReadOnlyList<long> starts, long count, int[] shape)
    {
        var blockBytes = checked((int)(count * RowBytes));
        var data = GC.AllocateUninitializedArray<byte>(checked(blockBytes * starts.Count));
        for (var i = 0; i < starts.Count; i++)
        {
            new ReadOnlySpan<byte>(_pointer + (starts[i] * RowBytes), blockBytes).CopyTo(data.AsSpan(i * blockBytes));
        }

        return backend.Upload(data, DType, shape);
    }

    /// <summary>Columns [start, start + count) of every row, shaped as <paramref name="shape"/> (always a copy).</summary>
    public Tensor TakeColumns(IComputeBackend backend, int start, int count, int[] shape)
    {
        var size = DType.SizeInBytes();
        var sliceBytes = count * size;
        var data = GC.AllocateUninitializedArray<byte>(checked((int)(Rows * sliceBytes)));
        for (long row = 0; row < Rows; row++)
        {
            Row(row).Slice(start * size, sliceBytes).CopyTo(data.AsSpan(checked((int)(row * sliceBytes))));
        }

        return backend.Upload(data, DType, shape);
    }

    /// <summary>Element (row, column) as f32; the matrix must be f32, f16 or bf16.</summary>
    public float ReadSingle(long row, int column)
    {
        var element = _pointer + (row * RowBytes) + ((long)column * DType.SizeInBytes());
        return DType switch
        {
            DType.F32 => *(float*)element,
            DType.F16 => (float)*(Half*)element,
            DType.BF16 => BitConverter.Int32BitsToSingle(*(ushort*)element << 16),
            _ => throw new NotSupportedException($"{DType} is not a floating-point dtype."),
        };
    }
}
