using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>
/// MLX affine-quantized rows: w[i] = scale[g] * q[i] + bias[g], g = i / groupSize, codes packed least-significant
/// bits first in u32 words. Both loops use w·x = scale * Σ q x + bias * Σ x per group, with Σ x per group shared by
/// all rows. 8-bit rows convert codes to f32; 4-bit rows (repacked, see <see cref="PackedQuantizedRows"/>) multiply
/// codes with a 16-bit fixed-point copy of x in integer arithmetic.
/// </summary>
internal static unsafe class QuantizedKernels
{
    /// <summary>Inputs sharing one fixed-point step: the smallest group size.</summary>
    private const int StepSpan = 32;

    /// <summary>
    /// Largest fixed-point magnitude: x is stored as round(x / step) with step = max |x| of its span / 32512, a bound
    /// that keeps both bytes of the split 256 × high + low (low signed) within a signed byte.
    /// </summary>
    private const float FixedRange = 32512f;

    /// <summary>
    /// Where each of a span's 64 output bytes comes from, as indices into its 32 high bytes followed by its 32 low bytes:
    /// per word of 8 inputs, the high bytes of inputs 0, 2, 4, 6 (the word's low nibbles), of 1, 3, 5, 7, then the low
    /// bytes of the same.
    /// </summary>
    private static readonly (Vector512<short> First, Vector512<short> Second) SpanByteOrder = CreateSpanByteOrder();

    /// <summary>Whether 4-bit rows take the fixed-point loop over repacked rows.</summary>
    public static bool UsesFixedPoint(int bits) => bits == 4 && Avx512BW.IsSupported;

    /// <summary>Bytes of scratch <see cref="PrepareInput"/> writes for one decode input.</summary>
    public static long PreparedInputBytes(int inFeatures, int bits, int groupSize)
    {
        var groups = (long)(inFeatures / groupSize);
        return UsesFixedPoint(bits)
            ? (2L * inFeatures) + ((inFeatures / StepSpan) * sizeof(float)) + (groups * sizeof(float))
            : groups * sizeof(float);
    }

    /// <summary>
    /// Writes into <paramref name="scratch"/> what the decode loops read besides the rows: the per-group sums of x,
    /// and for 4-bit rows a fixed-point copy of x in the loop's byte order plus the step of each span (other loops read
    /// x where it is).
    /// </summary>
    public static QuantizedInput PrepareInput(float* x, int inFeatures, int bits, int groupSize, byte* scratch)
    {
        var groups = inFeatures / groupSize;
        if (UsesFixedPoint(bits))
        {
            var fixedPoint = (sbyte*)scratch;
            var spanSteps = (float*)(fixedPoint + (2L * inFeatures));
            var fixedInput = new QuantizedInput(null, fixedPoint, spanSteps + (inFeatures / StepSpan), spanSteps);
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
    /// Two quantized rows · x in the checkpoint's layout (8-bit rows, or 4-bit rows where the fixed-point loop does not
    /// run), where <paramref name="input"/> comes from <see cref="PrepareInput"/>; <paramref name="rows"/> holds each row's
    /// codes, scales and biases (scales and biases in the dtype <typeparamref name="TScale"/> reads). Two rows per pass
    /// share the loads of x; for an odd row count pass the same row twice.
    /// </summary>
    public static void DotRows<TScale>(in RowPair rows, in QuantizedInput input, int inFeatures, int bits, int groupSize, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        if (bits == 8 && Avx512F.IsSupported)
        {
            DotRows8<TScale>(rows, input.Values, input.GroupSums, inFeatures / groupSize, groupSize, out sum0, out sum1);
        }
        else
        {
            sum0 = ScalarDotRow<TScale>(rows.Codes0, rows.Scales0, rows.Biases0, input.Values, input.GroupSums, inFeatures, bits, groupSize);
            sum1 = ScalarDotRow<TScale>(rows.Codes1, rows.Scales1, rows.Biases1, input.Values, input.GroupSums, inFeatures, bits, groupSize);
        }
    }

    /// <summary>
    /// x as fixed point, one step per span of 32 inputs (max |x| / 32512, so the rounding error is at most 1/65024 of the
    /// span's largest input; bf16 activations carry 1/256 of each value), each value v split as 256 × high + low with
    /// both parts signed bytes, because the loop multiplies unsigned code bytes with signed bytes. Per word of 8 inputs
    /// (the 8 codes of one packed u32), 16 bytes: the high bytes of inputs 0, 2, 4, 6, of 1, 3, 5, 7, then the low bytes
    /// of the same, each 4 read as one int32 the loop broadcasts. The group sums are those of the rounded values, as
    /// <see cref="RoundToFixedPoint"/> gives them to prefill.
    /// </summary>
    private static void ToFixedPoint(float* x, int inFeatures, int groupSize, in QuantizedInput input)
    {
        new Span<float>(input.GroupSums, inFeatures / groupSize).Clear();
        for (var span = 0; span < inFeatures / StepSpan; span++)
        {
            var first = span * StepSpan;
            var step = QuantizeSpan(x + first, out var lower, out var upper);
            input.SpanSteps[span] = step.ToScalar();
            input.GroupSums[first / groupSize] += Vector512.Sum((Avx512F.ConvertToVector512Single(lower) * step) + (Avx512F.ConvertToVector512Single(upper) * step));

            var values = Vector512.Create(Avx512F.ConvertToVector256Int16WithSaturation(lower), Avx512F.ConvertToVector256Int16WithSaturation(upper));
            var low = Avx512BW.ShiftRightArithmetic(Avx512BW.ShiftLeftLogical(values, 8), 8);
            var high = Avx512BW.ShiftRightArithmetic(values - low, 8);
            var output = input.FixedPoint + (2 * first);
            Avx512BW.ConvertToVector256SByte(Avx512BW.PermuteVar32x16x2(high, SpanByteOrder.First, low)).Store(output);
            Avx512BW.ConvertToVector256SByte(Avx512BW.PermuteVar32x16x2(high, SpanByteOrder.Second, low)).Store(output + 32);
        }
    }

    private static (Vector512<short> First, Vector512<short> Second) CreateSpanByteOrder()
    {
        var order = new short[2 * StepSpan];
        for (var b = 0; b < order.Length; b++)
        {
            var (word, part, k) = (b / 16, b % 16 / 4, b % 4);
            var input = (word * 8) + (2 * k) + (part % 2);
            order[b] = (short)((part < 2 ? 0 : StepSpan) + input);
        }

        return (Vector512.Create<short>(order), Vector512.Create<short>(order.AsSpan(StepSpan)));
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
internal readonly unsafe struct QuantizedInput(float* values, sbyte* fixedPoint, float* groupSums, float* spanSteps)
{
    /// <summary>x itself, for the loops that do not use the fixed-point copy.</summary>
    public float* Values { get; } = values;

    /// <summary>x in fixed point, split into high and low bytes in the order of the 4-bit loop (16 bytes per 8 inputs).</summary>
    public sbyte* FixedPoint { get; } = fixedPoint;

    public float* GroupSums { get; } = groupSums;

    /// <summary>The fixed-point step of each span of 32 inputs.</summary>
    public float* SpanSteps { get; } = spanSteps;
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
