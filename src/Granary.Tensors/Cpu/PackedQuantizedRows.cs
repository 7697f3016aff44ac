using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>
/// A 4-bit MLX weight repacked once for the one-token loop (<see cref="DotBlockPair{TScale}"/>): rows in blocks of 16
/// whose packed u32 words are interleaved, word k of the block's 16 rows side by side, so one 512-bit load holds 8 codes
/// of each of 16 rows and every 32-bit lane of the byte products belongs to one row. The integer sums then run over a
/// whole span of 32 inputs before they are converted, instead of being converted and scaled after every 8 codes of a row
/// as a row-major loop must, which halves the vector operations per code. Scales and biases are interleaved the same
/// way, per group: the block's 16 scales, then its 16 biases, in the checkpoint's dtype. Rows are padded with zeros to a
/// multiple of 32 (the loop's block pair). The copy is made from the checkpoint's layout, which stays as it was for
/// prefill, embeddings and every other reader; it costs as much memory as the codes, scales and biases.
/// </summary>
internal sealed unsafe class PackedQuantizedRows : IDisposable
{
    /// <summary>Rows interleaved in one block: the 16 int32 lanes of a 512-bit vector.</summary>
    public const int BlockRows = 16;

    /// <summary>Rows of one pass of the loop: two blocks share the broadcasts of x and keep 4 chains of sums in flight.</summary>
    public const int PairRows = 2 * BlockRows;

    /// <summary>Inputs sharing one fixed-point step (see <see cref="QuantizedKernels"/>): 4 words of 8 codes.</summary>
    private const int SpanInputs = 32;

    private readonly Tensor _codes;
    private readonly Tensor _scalesAndBiases;

    private PackedQuantizedRows(Tensor codes, Tensor scalesAndBiases, int inFeatures, int groupSize)
    {
        _codes = codes;
        _scalesAndBiases = scalesAndBiases;
        Groups = inFeatures / groupSize;
        BlockCodeBytes = (long)inFeatures / 2 * BlockRows;
        BlockScaleBytes = (long)Groups * 2 * BlockRows * scalesAndBiases.DType.SizeInBytes();
    }

    public int Groups { get; }

    /// <summary>Bytes of codes of one block of 16 rows.</summary>
    public long BlockCodeBytes { get; }

    /// <summary>Bytes of scales and biases of one block of 16 rows.</summary>
    public long BlockScaleBytes { get; }

    public byte* Codes => (byte*)CpuBackend.PointerOf(_codes);

    public byte* ScalesAndBiases => (byte*)CpuBackend.PointerOf(_scalesAndBiases);

    /// <summary>
    /// The packed copy of <paramref name="weight"/> when the CPU takes the fixed-point 4-bit loop
    /// (<see cref="QuantizedKernels.UsesFixedPoint"/>), else null (other loops read the checkpoint's layout).
    /// </summary>
    public static PackedQuantizedRows? TryCreate(CpuBackend backend, QuantizedWeight weight)
    {
        if (!QuantizedKernels.UsesFixedPoint(weight.Bits))
        {
            return null;
        }

        TensorChecks.RequireQuantizedScales(weight);
        var paddedRows = (weight.OutFeatures + PairRows - 1) / PairRows * PairRows;
        var words = weight.InFeatures / 8;
        var groups = weight.InFeatures / weight.GroupSize;
        var codes = backend.Allocate(DType.U32, paddedRows, words);
        Tensor? scalesAndBiases = null;
        try
        {
            scalesAndBiases = backend.Allocate(weight.Scales.DType, paddedRows, 2 * groups);
            var packed = new PackedQuantizedRows(codes, scalesAndBiases, weight.InFeatures, weight.GroupSize);
            packed.CopyFrom(weight);
            return packed;
        }
        catch
        {
            codes.Dispose();
            scalesAndBiases?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Rows 32p..32p+31 (the block pair at <paramref name="codes"/> and <paramref name="scalesAndBiases"/>) · x into
    /// <paramref name="output"/>[0..31], with x from <see cref="QuantizedKernels.PrepareInput"/>: per span of 32 inputs,
    /// 4 words of codes per row, each split into its low and high nibbles (inputs 0, 2, 4, 6 and 1, 3, 5, 7 of the word)
    /// and multiplied by byte pair products with the high and low bytes of those inputs broadcast to all 16 rows. The
    /// products of a span are summed in 16 bits (8 products of at most 2 × 15 × 128 stay below 32767, so nothing
    /// saturates), widened once (× 256 for the high bytes) to Σ q x of the span exactly, converted, and scaled by the
    /// span's step times the row's group scale. Σ bias × Σx is added per group. Byte pair products and 16-bit sums take
    /// 11 vector operations per 64 bytes of codes at 512 bits; 256-bit VNNI byte dot products, the only ones .NET
    /// exposes on CPUs without AVX10, take 14.
    /// </summary>
    public static void DotBlockPair<TScale>(
        byte* codes, byte* scalesAndBiases, in QuantizedInput input, int groups, int groupSize, long blockCodeBytes, long blockScaleBytes, float* output)
        where TScale : struct, IWeightLoader
    {
        var codes0 = codes;
        var codes1 = codes + blockCodeBytes;
        var scales0 = scalesAndBiases;
        var scales1 = scalesAndBiases + blockScaleBytes;

        // The hardware prefetcher does not run far enough ahead on two streams: fetch the next pair as this one goes
        // (one pass over a pair is as long as the distance).
        var ahead = 2 * blockCodeBytes;
        var scalesAhead = 2 * blockScaleBytes;
        var words = (int*)input.FixedPoint;
        var spansPerGroup = groupSize / SpanInputs;
        var span = 0;
        var nibble = Vector512.Create((byte)0xF);
        var highWeight = Vector512.Create((short)256);
        var lowWeight = Vector512<short>.One;
        Vector512<float> total0 = default, total1 = default;
        for (var g = 0; g < groups; g++)
        {
            var scaleIndex = g * 2 * BlockRows;
            Sse.Prefetch0(scales0 + scalesAhead + (scaleIndex * TScale.ElementSize));
            Sse.Prefetch0(scales1 + scalesAhead + (scaleIndex * TScale.ElementSize));
            var groupSum = Vector512.Create(input.GroupSums[g]);
            total0 = Avx512F.FusedMultiplyAdd(TScale.Load16(scales0, scaleIndex + BlockRows), groupSum, total0);
            total1 = Avx512F.FusedMultiplyAdd(TScale.Load16(scales1, scaleIndex + BlockRows), groupSum, total1);
            var scale0 = TScale.Load16(scales0, scaleIndex);
            var scale1 = TScale.Load16(scales1, scaleIndex);
            for (var end = span + spansPerGroup; span < end; span++)
            {
                // 4 words of 8 codes per row: 256 bytes per block, four cache lines.
                var offset = span * 4 * 64;
                Sse.Prefetch0(codes0 + ahead + offset);
                Sse.Prefetch0(codes0 + ahead + offset + 64);
                Sse.Prefetch0(codes0 + ahead + offset + 128);
                Sse.Prefetch0(codes0 + ahead + offset + 192);
                Sse.Prefetch0(codes1 + ahead + offset);
                Sse.Prefetch0(codes1 + ahead + offset + 64);
                Sse.Prefetch0(codes1 + ahead + offset + 128);
                Sse.Prefetch0(codes1 + ahead + offset + 192);
                Vector512<short> high0 = default, low0 = default, high1 = default, low1 = default;
                for (var word = 0; word < 4; word++)
                {
                    var x = words + (((span * 4) + word) * 4);
                    var xHighEven = Vector512.Create(x[0]).AsSByte();
                    var xHighOdd = Vector512.Create(x[1]).AsSByte();
                    var xLowEven = Vector512.Create(x[2]).AsSByte();
                    var xLowOdd = Vector512.Create(x[3]).AsSByte();
                    var packed0 = Vector512.Load(codes0 + offset + (word * 64));
                    var packed1 = Vector512.Load(codes1 + offset + (word * 64));
                    var even0 = packed0 & nibble;
                    var odd0 = Avx512BW.ShiftRightLogical(packed0.AsUInt16(), 4).AsByte() & nibble;
                    var even1 = packed1 & nibble;
                    var odd1 = Avx512BW.ShiftRightLogical(packed1.AsUInt16(), 4).AsByte() & nibble;
                    high0 += Avx512BW.MultiplyAddAdjacent(even0, xHighEven) + Avx512BW.MultiplyAddAdjacent(odd0, xHighOdd);
                    low0 += Avx512BW.MultiplyAddAdjacent(even0, xLowEven) + Avx512BW.MultiplyAddAdjacent(odd0, xLowOdd);
                    high1 += Avx512BW.MultiplyAddAdjacent(even1, xHighEven) + Avx512BW.MultiplyAddAdjacent(odd1, xHighOdd);
                    low1 += Avx512BW.MultiplyAddAdjacent(even1, xLowEven) + Avx512BW.MultiplyAddAdjacent(odd1, xLowOdd);
                }

                var step = Vector512.Create(input.SpanSteps[span]);
                var sum0 = Avx512BW.MultiplyAddAdjacent(high0, highWeight) + Avx512BW.MultiplyAddAdjacent(low0, lowWeight);
                var sum1 = Avx512BW.MultiplyAddAdjacent(high1, highWeight) + Avx512BW.MultiplyAddAdjacent(low1, lowWeight);
                total0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sum0), scale0 * step, total0);
                total1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(sum1), scale1 * step, total1);
            }
        }

        total0.Store(output);
        total1.Store(output + BlockRows);
    }

    public void Dispose()
    {
        _codes.Dispose();
        _scalesAndBiases.Dispose();
    }

    private void CopyFrom(QuantizedWeight weight)
    {
        var words = weight.InFeatures / 8;
        var source = (uint*)CpuBackend.PointerOf(weight.Codes);
        var scales = (byte*)CpuBackend.PointerOf(weight.Scales);
        var biases = (byte*)CpuBackend.PointerOf(weight.Biases);
        var scaleSize = weight.Scales.DType.SizeInBytes();
        var rows = weight.OutFeatures;
        var (codes, scalesAndBiases) = ((nint)Codes, (nint)ScalesAndBiases);
        var (blockCodeBytes, blockScaleBytes, groups) = (BlockCodeBytes, BlockScaleBytes, Groups);

        // Blocks are independent; padding rows stay zero (codes, scales and biases), so their outputs are 0.
        Parallel.For(0, (rows + BlockRows - 1) / BlockRows, block =>
        {
            var codeBlock = (uint*)((byte*)codes + (block * blockCodeBytes));
            var scaleBlock = (byte*)scalesAndBiases + (block * blockScaleBytes);
            for (var r = 0; r < BlockRows && (block * BlockRows) + r < rows; r++)
            {
                var row = (long)(block * BlockRows) + r;
                var sourceRow = source + (row * words);
                for (var k = 0; k < words; k++)
                {
                    codeBlock[(k * BlockRows) + r] = sourceRow[k];
                }

                for (var g = 0; g < groups; g++)
                {
                    var destination = scaleBlock + (((g * 2 * BlockRows) + r) * scaleSize);
                    Buffer.MemoryCopy(scales + (((row * groups) + g) * scaleSize), destination, scaleSize, scaleSize);
                    Buffer.MemoryCopy(biases + (((row * groups) + g) * scaleSize), destination + (BlockRows * scaleSize), scaleSize, scaleSize);
                }
            }
        });
    }
}
