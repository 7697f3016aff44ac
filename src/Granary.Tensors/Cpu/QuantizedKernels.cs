using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>
/// MLX affine-quantized rows: w[i] = scale[g] * q[i] + bias[g], g = i / groupSize, codes packed least-significant
/// bits first in u32 words. 8-bit rows use w·x = scale * Σ q x + bias * Σ x per group, with Σ x per group shared by
/// all rows; 4-bit rows look their weights up in a per-group table.
/// </summary>
internal static unsafe class QuantizedKernels
{
    /// <summary>
    /// Whether <see cref="PrepareInput"/> reorders x within each block of 32 into [even positions, odd positions], matching
    /// the low and high nibbles of 16 packed 4-bit codes so the AVX-512 loop needs no shuffles.
    /// </summary>
    public static bool PermutesInput(int bits) => bits == 4 && Avx512F.IsSupported;

    /// <summary>Writes x in the order <see cref="DotRows"/> reads it and, where <see cref="DotRows"/> reads them, the per-group sums of x.</summary>
    public static void PrepareInput(float* x, int inFeatures, int bits, int groupSize, float* prepared, float* groupSums)
    {
        if (PermutesInput(bits))
        {
            DenseKernels.DeinterleavePairs(x, inFeatures, prepared);
        }
        else
        {
            Buffer.MemoryCopy(x, prepared, (long)inFeatures * 4, (long)inFeatures * 4);
        }

        // The AVX-512 4-bit loop folds the biases into its lookup table and never reads the group sums.
        if (PermutesInput(bits))
        {
            return;
        }

        for (var g = 0; g < inFeatures / groupSize; g++)
        {
            groupSums[g] = TensorPrimitives.Sum(new ReadOnlySpan<float>(x + (g * groupSize), groupSize));
        }
    }

    /// <summary>
    /// Two quantized rows · x, where <paramref name="prepared"/> and <paramref name="groupSums"/> come from
    /// <see cref="PrepareInput"/>; <paramref name="rows"/> holds each row's codes, scales and biases (scales and biases in
    /// the dtype <typeparamref name="TScale"/> reads, converted one per group in registers). Two rows per pass give the FMA
    /// pipes four independent chains; for an odd row count pass the same row twice.
    /// </summary>
    public static void DotRows<TScale>(in RowPair rows, float* prepared, float* groupSums, int inFeatures, int bits, int groupSize, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        var groups = inFeatures / groupSize;
        if (!Avx512F.IsSupported)
        {
            sum0 = ScalarDotRow<TScale>(rows.Codes0, rows.Scales0, rows.Biases0, prepared, groupSums, inFeatures, bits, groupSize);
            sum1 = ScalarDotRow<TScale>(rows.Codes1, rows.Scales1, rows.Biases1, prepared, groupSums, inFeatures, bits, groupSize);
        }
        else if (bits == 4)
        {
            DotRows4<TScale>(rows, prepared, groups, groupSize, out sum0, out sum1);
        }
        else
        {
            DotRows8<TScale>(rows, prepared, groupSums, groups, groupSize, out sum0, out sum1);
        }
    }

    /// <summary>
    /// 4-bit rows: the 16 possible weights of a group (scale * q + bias) fit one register, so a code becomes its weight
    /// with one permute (which reads only the low 4 bits of each index) instead of an int-to-float conversion, and
    /// neither the group scale nor the bias needs a separate pass.
    /// </summary>
    private static void DotRows4<TScale>(in RowPair rows, float* prepared, int groups, int groupSize, out float sum0, out float sum1)
        where TScale : struct, IWeightLoader
    {
        var bytes0 = (byte*)rows.Codes0;
        var bytes1 = (byte*)rows.Codes1;
        var xs = prepared;
        var levels = Vector512.Create(0f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        Vector512<float> a0 = default, b0 = default, a1 = default, b1 = default;
        for (var g = 0; g < groups; g++)
        {
            var table0 = Avx512F.FusedMultiplyAdd(levels, Vector512.Create(TScale.Load1(rows.Scales0, g)), Vector512.Create(TScale.Load1(rows.Biases0, g)));
            var table1 = Avx512F.FusedMultiplyAdd(levels, Vector512.Create(TScale.Load1(rows.Scales1, g)), Vector512.Create(TScale.Load1(rows.Biases1, g)));
            for (var k = 0; k < groupSize; k += 32)
            {
                // 16 bytes hold 32 codes: low nibbles are the even positions, high nibbles the odd ones.
                var even = Vector512.Load(xs);
                var odd = Vector512.Load(xs + 16);
                var packed0 = Avx512F.ConvertToVector512Int32(Vector128.Load(bytes0));
                var packed1 = Avx512F.ConvertToVector512Int32(Vector128.Load(bytes1));
                a0 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table0, packed0), even, a0);
                b0 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table0, Avx512F.ShiftRightLogical(packed0, 4)), odd, b0);
                a1 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table1, packed1), even, a1);
                b1 = Avx512F.FusedMultiplyAdd(Avx512F.PermuteVar16x32(table1, Avx512F.ShiftRightLogical(packed1, 4)), odd, b1);
                bytes0 += 16;
                bytes1 += 16;
                xs += 32;
            }
        }

        sum0 = Vector512.Sum(a0 + b0);
        sum1 = Vector512.Sum(a1 + b1);
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
