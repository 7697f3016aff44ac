using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>Dot products of dense weight rows with an f32 activation vector.</summary>
internal static unsafe class DenseKernels
{
    /// <summary>
    /// How far ahead of its read position <see cref="GemvSequential"/> prefetches; on the 2-core EPYC VM 4 KiB gave about
    /// a fifth more bf16 decode tokens/s than 2 KiB (interleaved runs).
    /// </summary>
    private const int StreamPrefetchBytes = 4096;

    /// <summary>
    /// y[o] = W[o, :] · x for o in [<paramref name="firstRow"/>, <paramref name="endRow"/>). Four rows per pass share each
    /// load of x, and each row is read exactly once; used for f32 weights and cached prefill tiles (16-bit decode weights
    /// go through <see cref="GemvSequential"/> where AVX-512 is available).
    /// <paramref name="xBlocks"/> is x in the order <typeparamref name="T"/> loads blocks of 32 (see <see cref="IWeightLoader.Interleaved"/>).
    /// </summary>
    public static void Gemv<T>(byte* weight, int inFeatures, float* x, float* xBlocks, float* y, int firstRow, int endRow)
        where T : struct, IWeightLoader
    {
        var rowBytes = (long)inFeatures * T.ElementSize;
        var o = firstRow;
        if (Avx512F.IsSupported)
        {
            for (; o + 4 <= endRow; o += 4)
            {
                var r0 = weight + (o * rowBytes);
                var r1 = r0 + rowBytes;
                var r2 = r1 + rowBytes;
                var r3 = r2 + rowBytes;
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                Vector512<float> b0 = default, b1 = default, b2 = default, b3 = default;
                long i = 0;
                for (; i + 32 <= inFeatures; i += 32)
                {
                    var x0 = Vector512.Load(xBlocks + i);
                    var x1 = Vector512.Load(xBlocks + i + 16);

                    T.Load32(r0, i, out var w0, out var v0);
                    a0 = Avx512F.FusedMultiplyAdd(w0, x0, a0);
                    b0 = Avx512F.FusedMultiplyAdd(v0, x1, b0);
                    T.Load32(r1, i, out var w1, out var v1);
                    a1 = Avx512F.FusedMultiplyAdd(w1, x0, a1);
                    b1 = Avx512F.FusedMultiplyAdd(v1, x1, b1);
                    T.Load32(r2, i, out var w2, out var v2);
                    a2 = Avx512F.FusedMultiplyAdd(w2, x0, a2);
                    b2 = Avx512F.FusedMultiplyAdd(v2, x1, b2);
                    T.Load32(r3, i, out var w3, out var v3);
                    a3 = Avx512F.FusedMultiplyAdd(w3, x0, a3);
                    b3 = Avx512F.FusedMultiplyAdd(v3, x1, b3);
                }

                if (i + 16 <= inFeatures)
                {
                    var x0 = Vector512.Load(x + i);
                    a0 = Avx512F.FusedMultiplyAdd(T.Load16(r0, i), x0, a0);
                    a1 = Avx512F.FusedMultiplyAdd(T.Load16(r1, i), x0, a1);
                    a2 = Avx512F.FusedMultiplyAdd(T.Load16(r2, i), x0, a2);
                    a3 = Avx512F.FusedMultiplyAdd(T.Load16(r3, i), x0, a3);
                    i += 16;
                }

                var sums = Sum4(a0 + b0, a1 + b1, a2 + b2, a3 + b3);
                for (; i < inFeatures; i++)
                {
                    var xi = x[i];
                    sums += Vector128.Create(T.Load1(r0, i), T.Load1(r1, i), T.Load1(r2, i), T.Load1(r3, i)) * xi;
                }

                sums.Store(y + o);
            }
        }

        for (; o < endRow; o++)
        {
            y[o] = Dot<T>(weight + (o * rowBytes), x, xBlocks, inFeatures);
        }
    }

    /// <summary>
    /// The decode GEMV of 16-bit weights (AVX-512 only), otherwise as <see cref="Gemv"/>: rows are read one after
    /// another, so each thread reads one sequential stream as the bandwidth probe does (four rows side by side are four
    /// streams), with a software prefetch a fixed distance ahead along it that runs on into the next rows. x comes from
    /// L1 for every row; the results of four rows share one reduction.
    /// </summary>
    public static void GemvSequential<T>(byte* weight, int inFeatures, float* x, float* xBlocks, float* y, int firstRow, int endRow)
        where T : struct, IWeightLoader
    {
        var rowBytes = (long)inFeatures * T.ElementSize;
        var o = firstRow;
        for (; o + 4 <= endRow; o += 4)
        {
            var r0 = weight + (o * rowBytes);
            var sums = Sum4(
                RowDot<T>(r0, inFeatures, x, xBlocks),
                RowDot<T>(r0 + rowBytes, inFeatures, x, xBlocks),
                RowDot<T>(r0 + (2 * rowBytes), inFeatures, x, xBlocks),
                RowDot<T>(r0 + (3 * rowBytes), inFeatures, x, xBlocks));
            sums.Store(y + o);
        }

        for (; o < endRow; o++)
        {
            y[o] = Dot<T>(weight + (o * rowBytes), x, xBlocks, inFeatures);
        }
    }

    /// <summary>One row · x as a vector of partial sums, prefetching <see cref="StreamPrefetchBytes"/> ahead of the row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> RowDot<T>(byte* row, int inFeatures, float* x, float* xBlocks)
        where T : struct, IWeightLoader
    {
        Vector512<float> a = default, b = default, c = default, d = default;
        long i = 0;
        for (; i + 64 <= inFeatures; i += 64)
        {
            var ahead = row + (i * T.ElementSize) + StreamPrefetchBytes;
            Sse.Prefetch0(ahead);
            Sse.Prefetch0(ahead + 64);
            T.Load32(row, i, out var w0, out var w1);
            T.Load32(row, i + 32, out var w2, out var w3);
            a = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(xBlocks + i), a);
            b = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(xBlocks + i + 16), b);
            c = Avx512F.FusedMultiplyAdd(w2, Vector512.Load(xBlocks + i + 32), c);
            d = Avx512F.FusedMultiplyAdd(w3, Vector512.Load(xBlocks + i + 48), d);
        }

        if (i + 32 <= inFeatures)
        {
            T.Load32(row, i, out var w0, out var w1);
            a = Avx512F.FusedMultiplyAdd(w0, Vector512.Load(xBlocks + i), a);
            b = Avx512F.FusedMultiplyAdd(w1, Vector512.Load(xBlocks + i + 16), b);
            i += 32;
        }

        if (i + 16 <= inFeatures)
        {
            c = Avx512F.FusedMultiplyAdd(T.Load16(row, i), Vector512.Load(x + i), c);
            i += 16;
        }

        var sum = (a + b) + (c + d);
        if (i < inFeatures)
        {
            var tail = 0f;
            for (; i < inFeatures; i++)
            {
                tail += T.Load1(row, i) * x[i];
            }

            sum = sum.WithElement(0, sum.GetElement(0) + tail);
        }

        return sum;
    }

    /// <summary>
    /// The element sums of four vectors, in order. One shared reduction tree instead of four separate ones: per group
    /// of four rows of a short decode GEMV (1024 inputs) the separate reductions were a tenth of the instructions.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector128<float> Sum4(Vector512<float> a, Vector512<float> b, Vector512<float> c, Vector512<float> d)
    {
        var ab = Avx.HorizontalAdd(a.GetLower() + a.GetUpper(), b.GetLower() + b.GetUpper());
        var cd = Avx.HorizontalAdd(c.GetLower() + c.GetUpper(), d.GetLower() + d.GetUpper());
        var all = Avx.HorizontalAdd(ab, cd);
        return all.GetLower() + all.GetUpper();
    }

    /// <summary>
    /// y[t * yStride + r] = W[r, :] · x[t, :] for 4 f32 weight rows and 4 token rows (AVX-512 only): 16 accumulators
    /// make the loop bound by FMA rather than by loads, which is what a prefill needs once the tile sits in cache.
    /// </summary>
    public static void Gemm4x4(float* w, int inFeatures, float* x, float* y, long yStride)
    {
        var w1 = w + inFeatures;
        var w2 = w1 + inFeatures;
        var w3 = w2 + inFeatures;
        var x1 = x + inFeatures;
        var x2 = x1 + inFeatures;
        var x3 = x2 + inFeatures;
        Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
        Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
        Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
        Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
        long i = 0;
        for (; i + 16 <= inFeatures; i += 16)
        {
            var a0 = Vector512.Load(w + i);
            var a1 = Vector512.Load(w1 + i);
            var a2 = Vector512.Load(w2 + i);
            var a3 = Vector512.Load(w3 + i);
            var b = Vector512.Load(x + i);
            c00 = Avx512F.FusedMultiplyAdd(a0, b, c00);
            c01 = Avx512F.FusedMultiplyAdd(a1, b, c01);
            c02 = Avx512F.FusedMultiplyAdd(a2, b, c02);
            c03 = Avx512F.FusedMultiplyAdd(a3, b, c03);
            b = Vector512.Load(x1 + i);
            c10 = Avx512F.FusedMultiplyAdd(a0, b, c10);
            c11 = Avx512F.FusedMultiplyAdd(a1, b, c11);
            c12 = Avx512F.FusedMultiplyAdd(a2, b, c12);
            c13 = Avx512F.FusedMultiplyAdd(a3, b, c13);
            b = Vector512.Load(x2 + i);
            c20 = Avx512F.FusedMultiplyAdd(a0, b, c20);
            c21 = Avx512F.FusedMultiplyAdd(a1, b, c21);
            c22 = Avx512F.FusedMultiplyAdd(a2, b, c22);
            c23 = Avx512F.FusedMultiplyAdd(a3, b, c23);
            b = Vector512.Load(x3 + i);
            c30 = Avx512F.FusedMultiplyAdd(a0, b, c30);
            c31 = Avx512F.FusedMultiplyAdd(a1, b, c31);
            c32 = Avx512F.FusedMultiplyAdd(a2, b, c32);
            c33 = Avx512F.FusedMultiplyAdd(a3, b, c33);
        }

        StoreRow(y, Vector512.Sum(c00), Vector512.Sum(c01), Vector512.Sum(c02), Vector512.Sum(c03), w, x, i, inFeatures);
        StoreRow(y + yStride, Vector512.Sum(c10), Vector512.Sum(c11), Vector512.Sum(c12), Vector512.Sum(c13), w, x1, i, inFeatures);
        StoreRow(y + (2 * yStride), Vector512.Sum(c20), Vector512.Sum(c21), Vector512.Sum(c22), Vector512.Sum(c23), w, x2, i, inFeatures);
        StoreRow(y + (3 * yStride), Vector512.Sum(c30), Vector512.Sum(c31), Vector512.Sum(c32), Vector512.Sum(c33), w, x3, i, inFeatures);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow(float* y, float s0, float s1, float s2, float s3, float* w, float* x, long tail, int inFeatures)
    {
        for (var i = tail; i < inFeatures; i++)
        {
            var xi = x[i];
            s0 += w[i] * xi;
            s1 += w[inFeatures + i] * xi;
            s2 += w[(2L * inFeatures) + i] * xi;
            s3 += w[(3L * inFeatures) + i] * xi;
        }

        y[0] = s0;
        y[1] = s1;
        y[2] = s2;
        y[3] = s3;
    }

    /// <summary>One weight row · x, with an AVX-512, a Vector256 and a scalar path; <paramref name="xBlocks"/> as for <see cref="Gemv"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot<T>(byte* row, float* x, float* xBlocks, int length)
        where T : struct, IWeightLoader
    {
        long i = 0;
        float sum = 0;
        if (Avx512F.IsSupported)
        {
            Vector512<float> a = default, b = default;
            for (; i + 32 <= length; i += 32)
            {
                T.Load32(row, i, out var first, out var second);
                a = Avx512F.FusedMultiplyAdd(first, Vector512.Load(xBlocks + i), a);
                b = Avx512F.FusedMultiplyAdd(second, Vector512.Load(xBlocks + i + 16), b);
            }

            if (i + 16 <= length)
            {
                a = Avx512F.FusedMultiplyAdd(T.Load16(row, i), Vector512.Load(x + i), a);
                i += 16;
            }

            sum = Vector512.Sum(a + b);
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            Vector256<float> a = default, b = default;
            for (; i + 16 <= length; i += 16)
            {
                a = Vector256.FusedMultiplyAdd(T.Load8(row, i), Vector256.Load(x + i), a);
                b = Vector256.FusedMultiplyAdd(T.Load8(row, i + 8), Vector256.Load(x + i + 8), b);
            }

            sum = Vector256.Sum(a + b);
        }

        for (; i < length; i++)
        {
            sum += T.Load1(row, i) * x[i];
        }

        return sum;
    }

    /// <summary>
    /// Writes x with each full block of 32 reordered to [even positions, odd positions] (the order in which 16-bit weights
    /// and 4-bit codes are split out of 32-bit lanes); the tail after the last full block is copied unchanged.
    /// </summary>
    public static void DeinterleavePairs(float* x, int length, float* destination)
    {
        var block = 0;
        if (Avx512F.IsSupported)
        {
            // Runs on the caller before every decode GEMV forks, so it is on the critical path.
            var evens = Vector512.Create(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
            var odds = evens + Vector512<int>.One;
            for (; block + 32 <= length; block += 32)
            {
                var low = Vector512.Load(x + block);
                var high = Vector512.Load(x + block + 16);
                Vector512.Store(Avx512F.PermuteVar16x32x2(low, evens, high), destination + block);
                Vector512.Store(Avx512F.PermuteVar16x32x2(low, odds, high), destination + block + 16);
            }
        }

        for (; block + 32 <= length; block += 32)
        {
            for (var j = 0; j < 16; j++)
            {
                destination[block + j] = x[block + (2 * j)];
                destination[block + 16 + j] = x[block + (2 * j) + 1];
            }
        }

        for (; block < length; block++)
        {
            destination[block] = x[block];
        }
    }

    /// <summary>Dot product of two f32 vectors.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(float* a, float* b, int length) => Dot<F32Loader>((byte*)a, b, b, length);

    /// <summary>destination[i] += a * source[i].</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void MultiplyAdd(float* source, float a, float* destination, int length)
    {
        long i = 0;
        if (Avx512F.IsSupported)
        {
            var av = Vector512.Create(a);
            for (; i + 16 <= length; i += 16)
            {
                Vector512.Store(Avx512F.FusedMultiplyAdd(Vector512.Load(source + i), av, Vector512.Load(destination + i)), destination + i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var av = Vector256.Create(a);
            for (; i + 8 <= length; i += 8)
            {
                Vector256.Store(Vector256.FusedMultiplyAdd(Vector256.Load(source + i), av, Vector256.Load(destination + i)), destination + i);
            }
        }

        for (; i < length; i++)
        {
            destination[i] = MathF.FusedMultiplyAdd(source[i], a, destination[i]);
        }
    }
}
