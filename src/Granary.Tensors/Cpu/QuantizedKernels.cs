using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>
/// MLX affine-quantized rows: w[i] = scale[g] * q[i] + bias[g], g = i / groupSize, codes packed least-significant
/// bits first in u32 words. Both loops use w·x = scale * Σ q x + bias * Σ x per group, with Σ x per group shared by
/// all rows. 8-bit rows convert codes to f32; 4-bit rows multiply codes with a 16-bit fixed-point copy of x in integer
/// arithmetic (see <see cref="DotRows4"/>).
/// </summary>
internal static unsafe class QuantizedKernels
{
    /// <summary>Codes of one chunk of the 4-bit loop: 32 bytes, one 256-bit load per row.</summary>
    private const int Chunk = 64;

    /// <summary>Inputs sharing one fixed-point step: the smallest group size.</summary>
    private const int StepSpan = 32;

    /// <summary>
    /// Largest fixed-point magnitude: x is stored as round(x / step) with step = max |x| of its span / 32512, a bound
    /// that keeps both bytes of the split 256 × high + low (low signed) within a signed byte.
    /// </summary>
    private const float FixedRange = 32512f;

    /// <summary>0, 2, ..., 62: the permute indices of the even inputs of a chunk (plus one: the odd ones).</summary>
    private static readonly Vector512<short> EvenIndices = Vector512<short>.Indices * 2;

    /// <summary>Whether 4-bit rows take the fixed-point loop (<see cref="DotRows4"/>).</summary>
    public static bool UsesFixedPoint(int bits) => bits == 4 && Avx512BW.IsSupported;

    /// <summary>Bytes of scratch <see cref="PrepareInput"/> writes for one decode input.</summary>
    public static long PreparedInputBytes(int inFeatures, int bits, int groupSize)
    {
        var groups = (long)(inFeatures / groupSize);
        return UsesFixedPoint(bits)
            ? (Chunks(inFeatures) * ((2 * Chunk) + (8 * sizeof(float)))) + (groups * sizeof(float))
            : groups * sizeof(float);
    }

    /// <summary>
    /// Floats of per-thread scratch <see cref="DotRows"/> needs for one row pair: each row's group scales as f32,
    /// padded so a 256-bit read at any chunk's first group stays inside; the caller zeroes it once, so the lanes of a half
    /// chunk past the last group (zero codes times zero inputs) are scaled by 0 rather than by stale values.
    /// </summary>
    public static long RowScratchFloats(int inFeatures, int groupSize) => 2 * ((inFeatures / groupSize) + 8);

    /// <summary>
    /// Writes into <paramref name="scratch"/> what <see cref="DotRows"/> reads besides the rows: the per-group sums of x,
    /// and for 4-bit rows a fixed-point copy of x in the loop's byte order plus the steps of each chunk (other loops read
    /// x where it is).
    /// </summary>
    public static QuantizedInput PrepareInput(float* x, int inFeatures, int bits, int groupSize, byte* scratch)
    {
        var groups = inFeatures / groupSize;
        if (UsesFixedPoint(bits))
        {
            var fixedPoint = (sbyte*)scratch;
            var laneSteps = (float*)(fixedPoint + (Chunks(inFeatures) * 2 * Chunk));
            var fixedInput = new QuantizedInput(null, fixedPoint, laneSteps + (Chunks(inFeatures) * 8), laneSteps);
            ToFixedPoint(x, inFeatures, groupSize, fixedInput);
            return fixedInput;
        }

        var input = new QuantizedInput(x, null, (float*)scratch, null);
        for (var g = 0; g < groups; g++)
        {
            input.GroupSums[g] = TensorPrimitives.Sum(new ReadOnlySpan<float>(x + (g * groupSize), groupSize));
        }

        return input;
    }

    /// <summary>
    /// Rounds <paramref name="count"/> inputs (a multiple of 32, rows of whole spans) to the values the fixed-point decode
    /// loop multiplies with, so a 4-bit layer computes the same function for one token and for many: prefill and batched
    /// steps dequantize weights and multiply them with these values in f32.
    /// </summary>
    public static void RoundToFixedPoint(float* x, long count, float* destination)
    {
        for (long i = 0; i < count; i += StepSpan)
        {
            var step = QuantizeSpan(x + i, out var lower, out var upper);
            (Avx512F.ConvertToVector512Single(lower) * step).Store(destination + i);
            (Avx512F.ConvertToVector512Single(upper) * step).Store(destination + i + 16);
        }
    }

    /// <summary>
    /// Two quantized rows · x, where <paramref name="input"/> comes from <see cref="PrepareInput"/>; <paramref name="rows"/>
    /// holds each row's codes, scales and biases (scales and biases in the dtype <typeparamref name="TScale"/> reads).
    /// Two rows per pass share the loads of x; for an odd row count pass the same row twice.
    /// <paramref name="rowScratch"/> holds <see cref="RowScratchFloats"/> zeroed floats.
    /// </summary>
    public static void DotRows<TScale>(in RowPair rows, in QuantizedInput input, int inFeatures, int bits, int groupSize, float* rowScratch, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        var groups = inFeatures / groupSize;
        if (UsesFixedPoint(bits))
        {
            DotRows4<TScale>(rows, input, inFeatures, groups, groupSize, rowScratch, out sum0, out sum1);
        }
        else if (!Avx512F.IsSupported)
        {
            sum0 = ScalarDotRow<TScale>(rows.Codes0, rows.Scales0, rows.Biases0, input.Values, input.GroupSums, inFeatures, bits, groupSize);
            sum1 = ScalarDotRow<TScale>(rows.Codes1, rows.Scales1, rows.Biases1, input.Values, input.GroupSums, inFeatures, bits, groupSize);
        }
        else
        {
            DotRows8<TScale>(rows, input.Values, input.GroupSums, groups, groupSize, out sum0, out sum1);
        }
    }

    private static long Chunks(int inFeatures) => (inFeatures + Chunk - 1) / Chunk;

    /// <summary>
    /// x as fixed point, one step per span of 32 inputs (max |x| / 32512, so the rounding error is at most 1/65024 of the
    /// span's largest input; bf16 activations carry 1/256 of each value), each value v split as 256 × high + low with
    /// both parts signed bytes, because the loop multiplies unsigned code bytes with signed bytes. Per chunk of 64
    /// inputs: 32 high bytes of the even inputs (the codes' low nibbles), 32 of the odd ones, then the same for the low
    /// bytes; and 8 lane steps, the step of the span each int32 lane of the loop's products covers. The group sums are
    /// those of the rounded values, as <see cref="RoundToFixedPoint"/> gives them to prefill. A partial chunk is padded
    /// with zeros.
    /// </summary>
    private static void ToFixedPoint(float* x, int inFeatures, int groupSize, in QuantizedInput input)
    {
        var inOrder = stackalloc short[Chunk];
        var steps = stackalloc float[Chunk / StepSpan];
        new Span<float>(input.GroupSums, inFeatures / groupSize).Clear();
        for (var chunk = 0; chunk * Chunk < inFeatures; chunk++)
        {
            var start = chunk * Chunk;
            for (var span = 0; span < Chunk / StepSpan; span++)
            {
                var first = start + (span * StepSpan);
                if (first >= inFeatures)
                {
                    new Span<short>(inOrder + (span * StepSpan), StepSpan).Clear();
                    steps[span] = 0;
                    continue;
                }

                var step = QuantizeSpan(x + first, out var lower, out var upper);
                Avx512F.ConvertToVector256Int16WithSaturation(lower).Store(inOrder + (span * StepSpan));
                Avx512F.ConvertToVector256Int16WithSaturation(upper).Store(inOrder + (span * StepSpan) + 16);
                steps[span] = step.ToScalar();
                input.GroupSums[first / groupSize] += Vector512.Sum((Avx512F.ConvertToVector512Single(lower) * step) + (Avx512F.ConvertToVector512Single(upper) * step));
            }

            // Lane m of the loop's products covers inputs 8m..8m+7 of the chunk: span m / 4.
            Vector256.Create(Vector128.Create(steps[0]), Vector128.Create(steps[1])).Store(input.LaneSteps + (chunk * 8));

            var lowerHalf = Vector512.Load(inOrder);
            var upperHalf = Vector512.Load(inOrder + 32);
            var output = input.FixedPoint + (chunk * 2 * Chunk);
            var even = Avx512BW.PermuteVar32x16x2(lowerHalf, EvenIndices, upperHalf);
            var odd = Avx512BW.PermuteVar32x16x2(lowerHalf, EvenIndices + Vector512<short>.One, upperHalf);
            SplitBytes(even, output, output + 64);
            SplitBytes(odd, output + 32, output + 96);
        }
    }

    /// <summary>Writes v = 256 × high + low (low sign-extended from its byte) as two vectors of signed bytes.</summary>
    private static void SplitBytes(Vector512<short> values, sbyte* high, sbyte* low)
    {
        var lowPart = Avx512BW.ShiftRightArithmetic(Avx512BW.ShiftLeftLogical(values, 8), 8);
        Avx512BW.ConvertToVector256SByte(Avx512BW.ShiftRightArithmetic(values - lowPart, 8)).Store(high);
        Avx512BW.ConvertToVector256SByte(lowPart).Store(low);
    }

    /// <summary>One span of 32 inputs as integers round(x / step), step = max |x| / 32512; returns the step (0 for zeros).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> QuantizeSpan(float* source, out Vector512<int> lower, out Vector512<int> upper)
    {
        var first = Vector512.Load(source);
        var second = Vector512.Load(source + 16);
        var maximum = HorizontalMax(Vector512.Max(Vector512.Abs(first), Vector512.Abs(second)));
        var scale = Vector512.Create(maximum > 0 ? FixedRange / maximum : 0f);
        lower = Avx512F.ConvertToVector512Int32(first * scale);
        upper = Avx512F.ConvertToVector512Int32(second * scale);
        return Vector512.Create(maximum / FixedRange);
    }

    private static float HorizontalMax(Vector512<float> values)
    {
        var half = Vector256.Max(values.GetLower(), values.GetUpper());
        var quarter = Vector128.Max(half.GetLower(), half.GetUpper());
        return MathF.Max(MathF.Max(quarter[0], quarter[1]), MathF.Max(quarter[2], quarter[3]));
    }

    /// <summary>
    /// 4-bit rows against the fixed-point x, 64 codes (32 bytes) per step: the low and high nibbles are masked out as
    /// unsigned bytes and multiplied with the high and low bytes of their inputs by byte dot products (VNNI where the CPU
    /// has it), each int32 lane summing the 8 codes 8m..8m+7 of the chunk, which share one group and one step span;
    /// 256 × high + low gives Σ q x exactly. Each lane is then converted once and scaled by its span's step and its
    /// group's scale: 14 256-bit operations per 64 codes, where a float loop needs 4 permutes or conversions and 4 FMAs
    /// of 512 bits. Σ bias × Σx is added per group in f32.
    /// </summary>
    private static void DotRows4<TScale>(in RowPair rows, in QuantizedInput input, int inFeatures, int groups, int groupSize, float* rowScratch, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        var scales0 = rowScratch;
        var scales1 = rowScratch + groups + 8;
        var biasTerms0 = Vector512<float>.Zero;
        var biasTerms1 = Vector512<float>.Zero;
        var g = 0;
        for (; g + 16 <= groups; g += 16)
        {
            var sums = Vector512.Load(input.GroupSums + g);
            TScale.Load16(rows.Scales0, g).Store(scales0 + g);
            TScale.Load16(rows.Scales1, g).Store(scales1 + g);
            biasTerms0 = Avx512F.FusedMultiplyAdd(TScale.Load16(rows.Biases0, g), sums, biasTerms0);
            biasTerms1 = Avx512F.FusedMultiplyAdd(TScale.Load16(rows.Biases1, g), sums, biasTerms1);
        }

        var biasTail0 = 0f;
        var biasTail1 = 0f;
        for (; g < groups; g++)
        {
            scales0[g] = TScale.Load1(rows.Scales0, g);
            scales1[g] = TScale.Load1(rows.Scales1, g);
            biasTail0 += TScale.Load1(rows.Biases0, g) * input.GroupSums[g];
            biasTail1 += TScale.Load1(rows.Biases1, g) * input.GroupSums[g];
        }

        // Lane m covers codes 8m..8m+7 of a chunk: group 8m / groupSize counted from the chunk's first group (for groups
        // of 128, a chunk's first group is chunk / 2 and every lane reads it).
        var groupShift = BitOperations.Log2((uint)groupSize);
        var groupOfLane = Vector256.ShiftRightLogical(Vector256<int>.Indices * 8, groupShift);
        var codes0 = (byte*)rows.Codes0;
        var codes1 = (byte*)rows.Codes1;
        Vector256<float> total0 = default, total1 = default;
        var fullChunks = inFeatures / Chunk;
        for (var chunk = 0; chunk < fullChunks; chunk++)
        {
            var x = input.FixedPoint + (chunk * 2 * Chunk);
            var steps = Vector256.Load(input.LaneSteps + (chunk * 8));
            var firstGroup = (chunk * Chunk) >> groupShift;
            total0 = AccumulateChunk(total0, Vector256.Load(codes0 + (chunk * 32)), x, steps, scales0 + firstGroup, groupOfLane);
            total1 = AccumulateChunk(total1, Vector256.Load(codes1 + (chunk * 32)), x, steps, scales1 + firstGroup, groupOfLane);
        }

        if (fullChunks * Chunk < inFeatures)
        {
            // A half chunk (inputs an odd multiple of 32): 16 bytes of codes, zero above; x is zero-padded past the end.
            var x = input.FixedPoint + (fullChunks * 2 * Chunk);
            var steps = Vector256.Load(input.LaneSteps + (fullChunks * 8));
            var firstGroup = (fullChunks * Chunk) >> groupShift;
            total0 = AccumulateChunk(total0, Vector256.Create(Vector128.Load(codes0 + (fullChunks * 32)), Vector128<byte>.Zero), x, steps, scales0 + firstGroup, groupOfLane);
            total1 = AccumulateChunk(total1, Vector256.Create(Vector128.Load(codes1 + (fullChunks * 32)), Vector128<byte>.Zero), x, steps, scales1 + firstGroup, groupOfLane);
        }

        sum0 = Vector256.Sum(total0) + Vector512.Sum(biasTerms0) + biasTail0;
        sum1 = Vector256.Sum(total1) + Vector512.Sum(biasTerms1) + biasTail1;
    }

    /// <summary>
    /// <paramref name="total"/> + one chunk's products, each int32 lane converted and scaled by its span's step and by its
    /// group's scale (picked from the row's scales starting at the chunk's first group).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<float> AccumulateChunk(
        Vector256<float> total, Vector256<byte> packed, sbyte* x, Vector256<float> steps, float* scales, Vector256<int> groupOfLane) =>
        Fma.MultiplyAdd(
            Avx.ConvertToVector256Single(MultiplyNibbles(packed, x)) * steps, Avx2.PermuteVar8x32(Vector256.Load(scales), groupOfLane), total);

    /// <summary>Σ code × input over the 64 codes in <paramref name="packed"/>, as 8 int32 sums of 8 codes each.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> MultiplyNibbles(Vector256<byte> packed, sbyte* x)
    {
        var nibble = Vector256.Create((byte)0xF);
        var even = packed & nibble;
        var odd = Avx2.ShiftRightLogical(packed.AsUInt16(), 4).AsByte() & nibble;
        var high = ByteDot(ByteDot(Vector256<int>.Zero, even, Vector256.Load(x)), odd, Vector256.Load(x + 32));
        var low = ByteDot(ByteDot(Vector256<int>.Zero, even, Vector256.Load(x + 64)), odd, Vector256.Load(x + 96));
        return Avx2.ShiftLeftLogical(high, 8) + low;
    }

    /// <summary>
    /// <paramref name="sums"/> + Σ of 4 adjacent unsigned × signed byte products per int32 lane: one VNNI instruction, or
    /// two multiply-adds without VNNI (the 16-bit pair sums, ≤ 2 × 15 × 128, cannot saturate).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<int> ByteDot(Vector256<int> sums, Vector256<byte> codes, Vector256<sbyte> x) =>
        AvxVnni.IsSupported
            ? AvxVnni.MultiplyWideningAndAdd(sums, codes, x)
            : sums + Avx2.MultiplyAddAdjacent(Avx2.MultiplyAddAdjacent(codes, x), Vector256<short>.One);

    private static void DotRows8<TScale>(in RowPair rows, float* x, float* groupSums, int groups, int groupSize, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        var bytes0 = (byte*)rows.Codes0;
        var bytes1 = (byte*)rows.Codes1;
        var xs = x;
        Vector512<float> total0 = default, total1 = default;
        float biasTerm0 = 0, biasTerm1 = 0;
        for (var g = 0; g < groups; g++)
        {
            Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default;
            for (var k = 0; k < groupSize; k += 32)
            {
                var first = Vector512.Load(xs);
                var second = Vector512.Load(xs + 16);
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(bytes0))), first, a0);
                b0 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(bytes0 + 16))), second, b0);
                a1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(bytes1))), first, a1);
                b1 = Avx512F.FusedMultiplyAdd(Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(Vector128.Load(bytes1 + 16))), second, b1);
                bytes0 += 32;
                bytes1 += 32;
                xs += 32;
            }

            total0 = Avx512F.FusedMultiplyAdd(a0 + b0, Vector512.Create(TScale.Load1(rows.Scales0, g)), total0);
            total1 = Avx512F.FusedMultiplyAdd(a1 + b1, Vector512.Create(TScale.Load1(rows.Scales1, g)), total1);
            biasTerm0 += TScale.Load1(rows.Biases0, g) * groupSums[g];
            biasTerm1 += TScale.Load1(rows.Biases1, g) * groupSums[g];
        }

        sum0 = biasTerm0 + Vector512.Sum(total0);
        sum1 = biasTerm1 + Vector512.Sum(total1);
    }

    /// <summary>Dequantizes one row into f32 (w = scale * q + bias, fused).</summary>
    public static void DequantizeRow(uint* codes, float* scales, float* biases, int inFeatures, int bits, int groupSize, float* destination)
    {
        var groups = inFeatures / groupSize;
        var bytes = (byte*)codes;
        for (var g = 0; g < groups; g++)
        {
            var scale = scales[g];
            var bias = biases[g];
            var output = destination + (g * groupSize);
            if (Avx512F.IsSupported)
            {
                var scaleVector = Vector512.Create(scale);
                var biasVector = Vector512.Create(bias);
                for (var k = 0; k < groupSize; k += 32)
                {
                    Vector128<byte> first, second;
                    if (bits == 4)
                    {
                        // Spread 16 bytes into 16-bit lanes, then put each lane's high nibble in its high byte:
                        // read as bytes, the 32 codes are then in order.
                        var lanes = Avx2.ConvertToVector256Int16(Vector128.Load(bytes)).AsUInt16();
                        var ordered = ((lanes & Vector256.Create((ushort)0x000F)) | ((lanes << 4) & Vector256.Create((ushort)0x0F00))).AsByte();
                        first = ordered.GetLower();
                        second = ordered.GetUpper();
                        bytes += 16;
                    }
                    else
                    {
                        first = Vector128.Load(bytes);
                        second = Vector128.Load(bytes + 16);
                        bytes += 32;
                    }

                    Vector512.Store(Avx512F.FusedMultiplyAdd(scaleVector, Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(first)), biasVector), output + k);
                    Vector512.Store(Avx512F.FusedMultiplyAdd(scaleVector, Avx512F.ConvertToVector512Single(Avx512F.ConvertToVector512Int32(second)), biasVector), output + k + 16);
                }
            }
            else if (bits == 4)
            {
                for (var j = 0; j < groupSize / 2; j++)
                {
                    var packed = bytes[j];
                    output[2 * j] = MathF.FusedMultiplyAdd(scale, packed & 0xF, bias);
                    output[(2 * j) + 1] = MathF.FusedMultiplyAdd(scale, packed >> 4, bias);
                }

                bytes += groupSize / 2;
            }
            else
            {
                for (var j = 0; j < groupSize; j++)
                {
                    output[j] = MathF.FusedMultiplyAdd(scale, bytes[j], bias);
                }

                bytes += groupSize;
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static float ScalarDotRow<TScale>(uint* codes, byte* scales, byte* biases, float* x, float* groupSums, int inFeatures, int bits, int groupSize)
        where TScale : struct, IWeightLoader
    {
        var mask = (1u << bits) - 1;
        var total = 0f;
        for (var g = 0; g < inFeatures / groupSize; g++)
        {
            var sum = 0f;
            for (var i = g * groupSize; i < (g + 1) * groupSize; i++)
            {
                var bit = (long)i * bits;
                sum += ((codes[bit / 32] >> (int)(bit % 32)) & mask) * x[i];
            }

            total += (TScale.Load1(scales, g) * sum) + (TScale.Load1(biases, g) * groupSums[g]);
        }

        return total;
    }
}

/// <summary>A decode input as <see cref="QuantizedKernels.DotRows"/> reads it (from <see cref="QuantizedKernels.PrepareInput"/>).</summary>
internal readonly unsafe struct QuantizedInput(float* values, sbyte* fixedPoint, float* groupSums, float* laneSteps)
{
    /// <summary>x itself, for the loops that do not use the fixed-point copy.</summary>
    public float* Values { get; } = values;

    /// <summary>x in fixed point, split into high and low bytes in the order of the 4-bit loop.</summary>
    public sbyte* FixedPoint { get; } = fixedPoint;

    public float* GroupSums { get; } = groupSums;

    /// <summary>Per chunk of 64 inputs, the fixed-point step of the inputs each of the 8 product lanes covers.</summary>
    public float* LaneSteps { get; } = laneSteps;
}

/// <summary>Codes, scales and biases of the two rows <see cref="QuantizedKernels.DotRows"/> reads.</summary>
internal readonly unsafe struct RowPair(uint* codes0, uint* codes1, byte* scales0, byte* scales1, byte* biases0, byte* biases1)
{
    public uint* Codes0 { get; } = codes0;

    public uint* Codes1 { get; } = codes1;

    public byte* Scales0 { get; } = scales0;

    public byte* Scales1 { get; } = scales1;

    public byte* Biases0 { get; } = biases0;

    public byte* Biases1 { get; } = biases1;
}
