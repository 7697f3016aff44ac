using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>Arguments of one parallel linear layer, shared by all work items (each item owns a range of output rows).</summary>
internal unsafe struct LinearJob
{
    public float* Input;
    public float* Output;
    public long Tokens;
    public int InFeatures;
    public int OutFeatures;
    public int RowsPerItem;
    public int Items;
    public byte* Bias;
    public DType BiasDType;

    // Dense weights.
    public byte* Weight;

    // Quantized weights.
    public uint* Codes;
    public byte* Scales;
    public byte* Biases;
    public DType ScaleDType;
    public int Bits;
    public int GroupSize;
    public QuantizedInput QuantizedInput;

    // 4-bit weights repacked for the decode loop (PackedQuantizedRows; null codes otherwise).
    public byte* PackedCodes;
    public byte* PackedScalesAndBiases;
    public long BlockCodeBytes;
    public long BlockScaleBytes;

    // The activation reordered for the AVX-512 loops of interleaved loaders (decode only).
    public float* PreparedInput;
}

/// <summary>Several <see cref="LinearJob"/>s of one input run as one pass: their items numbered one after another.</summary>
internal unsafe struct LinearGroupJob
{
    public LinearJob* Jobs;

    // Each job's kernel (a delegate*<void*, int, void>).
    public nint* Kernels;

    // The group's first item of each job, then the total.
    public int* FirstItems;
}

/// <summary>
/// Work items of <see cref="LinearJob"/>. Decode (one token) streams each weight row once straight from memory;
/// prefill converts a tile of rows to f32 in per-thread scratch (sized to stay in L2) and reuses it for every token.
/// </summary>
internal static unsafe class LinearKernels
{
    /// <summary>f32 bytes of weight tile kept per thread while it is applied to every token of a prefill.</summary>
    private const int TileBytes = 128 * 1024;

    /// <summary>How many rows ahead the quantized decode prefetches.</summary>
    private const int QuantizedPrefetchRows = 4;

    /// <summary>
    /// Weight bytes per decode work item: small enough that the join at the end of a GEMV waits for little, large
    /// enough that claiming an item (one uncontended compare-exchange, see <see cref="WorkerPool"/>) costs under 1%.
    /// </summary>
    private const int DecodeItemBytes = 32 * 1024;

    /// <summary>Output rows per decode work item, a multiple of <paramref name="rowGroup"/> (the rows of one pass of its loop).</summary>
    public static int DecodeRows(long rowBytes, int rowGroup) => (int)Math.Max(rowGroup, DecodeItemBytes / Math.Max(1, rowBytes) / rowGroup * rowGroup);

    public static int TileRows(int inFeatures) => Math.Clamp(TileBytes / (Math.Max(1, inFeatures) * sizeof(float)) / 4 * 4, 4, 64);

    /// <summary>Item <paramref name="item"/> of a <see cref="LinearGroupJob"/>: the job it falls in, at its own index there.</summary>
    public static void GroupItem(void* arguments, int item)
    {
        ref var group = ref *(LinearGroupJob*)arguments;
        var job = 0;
        while (item >= group.FirstItems[job + 1])
        {
            job++;
        }

        ((delegate*<void*, int, void>)group.Kernels[job])(group.Jobs + job, item - group.FirstItems[job]);
    }

    public static void DenseDecode<T>(void* arguments, int item)
        where T : struct, IWeightLoader
    {
        ref var job = ref *(LinearJob*)arguments;
        var (first, end) = Rows(ref job, item);
        var xBlocks = T.Interleaved && job.PreparedInput != null ? job.PreparedInput : job.Input;
        if (T.ElementSize == 2 && Avx512F.IsSupported)
        {
            DenseKernels.GemvSequential<T>(job.Weight, job.InFeatures, job.Input, xBlocks, job.Output, first, end);
        }
        else
        {
            DenseKernels.Gemv<T>(job.Weight, job.InFeatures, job.Input, xBlocks, job.Output, first, end);
        }

        AddBias(ref job, job.Output, first, end);
    }

    public static void DenseTiled<T>(void* arguments, int item)
        where T : struct, IWeightLoader
    {
        ref var job = ref *(LinearJob*)arguments;
        var (first, end) = Rows(ref job, item);
        var tile = ThreadScratch.Floats(0, (long)(end - first) * job.InFeatures);
        var rowBytes = (long)job.InFeatures * T.ElementSize;
        for (var o = first; o < end; o++)
        {
            T.ToSingle(job.Weight + (o * rowBytes), tile + ((long)(o - first) * job.InFeatures), job.InFeatures);
        }

        ApplyTile(ref job, tile, first, end);
    }

    public static void QuantizedDecode<TScale>(void* arguments, int item)
        where TScale : struct, IWeightLoader
    {
        ref var job = ref *(LinearJob*)arguments;
        var (first, end) = Rows(ref job, item);
        var wordsPerRow = (long)job.InFeatures * job.Bits / 32;
        var scaleRowBytes = (long)(job.InFeatures / job.GroupSize) * TScale.ElementSize;
        var codeRowBytes = wordsPerRow * 4;
        for (var o = first; o < end; o += 2)
        {
            var second = Math.Min(o + 1, end - 1);

            // Quantized rows are short (512 bytes for 1024 4-bit inputs), too short for the hardware prefetcher to ramp
            // up on; fetch the codes of the pair after next while this one computes.
            if (Sse.IsSupported && o + QuantizedPrefetchRows + 2 <= job.OutFeatures)
            {
                var ahead = (byte*)(job.Codes + ((o + QuantizedPrefetchRows) * wordsPerRow));
                for (long line = 0; line < 2 * codeRowBytes; line += 64)
                {
                    Sse.Prefetch0(ahead + line);
                }
            }

            var rows = new RowPair(
                job.Codes + (o * wordsPerRow),
                job.Codes + (second * wordsPerRow),
                job.Scales + (o * scaleRowBytes),
                job.Scales + (second * scaleRowBytes),
                job.Biases + (o * scaleRowBytes),
                job.Biases + (second * scaleRowBytes));
            QuantizedKernels.DotRows<TScale>(rows, job.QuantizedInput, job.InFeatures, job.Bits, job.GroupSize, out var sum0, out var sum1);
            job.Output[o] = sum0;
            job.Output[second] = sum1;
        }

        AddBias(ref job, job.Output, first, end);
    }

    /// <summary>Decode over <see cref="PackedQuantizedRows"/>: items are whole block pairs (32 rows, the last padded).</summary>
    public static void PackedDecode<TScale>(void* arguments, int item)
        where TScale : struct, IWeightLoader
    {
        ref var job = ref *(LinearJob*)arguments;
        var (first, end) = Rows(ref job, item);
        var groups = job.InFeatures / job.GroupSize;
        var padded = stackalloc float[PackedQuantizedRows.PairRows];
        for (var row = first; row < end; row += PackedQuantizedRows.PairRows)
        {
            var block = row / PackedQuantizedRows.BlockRows;
            var whole = row + PackedQuantizedRows.PairRows <= job.OutFeatures;
            PackedQuantizedRows.DotBlockPair<TScale>(
                job.PackedCodes + (block * job.BlockCodeBytes),
                job.PackedScalesAndBiases + (block * job.BlockScaleBytes),
                job.QuantizedInput,
                groups,
                job.GroupSize,
                job.BlockCodeBytes,
                job.BlockScaleBytes,
                whole ? job.Output + row : padded);
            if (!whole)
            {
                new ReadOnlySpan<float>(padded, job.OutFeatures - row).CopyTo(new Span<float>(job.Output + row, job.OutFeatures - row));
            }
        }

        AddBias(ref job, job.Output, first, end);
    }

    public static void QuantizedTiled(void* arguments, int item)
    {
        ref var job = ref *(LinearJob*)arguments;
        var (first, end) = Rows(ref job, item);
        var tile = ThreadScratch.Floats(0, (long)(end - first) * job.InFeatures);
        for (var o = first; o < end; o++)
        {
            DequantizeRow(ref job, o, tile + ((long)(o - first) * job.InFeatures));
        }

        ApplyTile(ref job, tile, first, end);
    }

    /// <summary>Dequantizes row <paramref name="row"/> of the job's quantized weight to f32.</summary>
    public static void DequantizeRow(ref LinearJob job, long row, float* destination)
    {
        var groups = job.InFeatures / job.GroupSize;
        var scales = ThreadScratch.Floats(1, 2L * groups);
        var biases = scales + groups;
        var scaleRowBytes = (long)groups * job.ScaleDType.SizeInBytes();
        FloatReader.ToSingle(job.Scales + (row * scaleRowBytes), job.ScaleDType, scales, groups);
        FloatReader.ToSingle(job.Biases + (row * scaleRowBytes), job.ScaleDType, biases, groups);
        QuantizedKernels.DequantizeRow(
            job.Codes + (row * job.InFeatures * (long)job.Bits / 32), scales, biases, job.InFeatures, job.Bits, job.GroupSize, destination);
    }

    private static void ApplyTile(ref LinearJob job, float* tile, int first, int end)
    {
        var rows = end - first;
        long t = 0;
        if (Avx512F.IsSupported)
        {
            var fullRows = rows / 4 * 4;
            for (; t + 4 <= job.Tokens; t += 4)
            {
                var x = job.Input + (t * job.InFeatures);
                var y = job.Output + (t * job.OutFeatures) + first;
                for (var r = 0; r < fullRows; r += 4)
                {
                    DenseKernels.Gemm4x4(tile + ((long)r * job.InFeatures), job.InFeatures, x, y + r, job.OutFeatures);
                }

                for (var token = 0; token < 4; token++)
                {
                    var xt = x + ((long)token * job.InFeatures);
                    var yt = y + ((long)token * job.OutFeatures);
                    DenseKernels.Gemv<F32Loader>((byte*)tile, job.InFeatures, xt, xt, yt, fullRows, rows);
                    AddBias(ref job, yt - first, first, end);
                }
            }
        }

        for (; t < job.Tokens; t++)
        {
            var x = job.Input + (t * job.InFeatures);
            var y = job.Output + (t * job.OutFeatures) + first;
            DenseKernels.Gemv<F32Loader>((byte*)tile, job.InFeatures, x, x, y, 0, rows);
            AddBias(ref job, y - first, first, end);
        }
    }

    private static (int First, int End) Rows(ref LinearJob job, int item)
    {
        var first = item * job.RowsPerItem;
        return (first, Math.Min(job.OutFeatures, first + job.RowsPerItem));
    }

    private static void AddBias(ref LinearJob job, float* y, int first, int end)
    {
        if (job.Bias == null)
        {
            return;
        }

        for (var o = first; o < end; o++)
        {
            y[o] += FloatReader.Read(job.Bias, job.BiasDType, o);
        }
    }
}
