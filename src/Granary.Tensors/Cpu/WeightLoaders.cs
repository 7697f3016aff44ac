using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Granary.Tensors.Numerics;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Reads dense weight elements of one dtype as f32, in registers. Kernels are generic over a loader struct so the
/// JIT emits one specialised loop per dtype with no dispatch inside it.
/// </summary>
internal unsafe interface IWeightLoader
{
    static abstract int ElementSize { get; }

    /// <summary>
    /// Whether <see cref="Load32"/> returns each block of 32 as [even positions, odd positions]: two 16-bit elements share
    /// a 32-bit lane, so splitting the lane halves is cheaper than widening. The activation must then be deinterleaved
    /// the same way (<see cref="DenseKernels.DeinterleavePairs"/>).
    /// </summary>
    static abstract bool Interleaved { get; }

    /// <summary>The 32 elements at <paramref name="row"/>[i] as two vectors; only called when AVX-512F is supported.</summary>
    static abstract void Load32(byte* row, long i, out Vector512<float> first, out Vector512<float> second);

    /// <summary>16 elements from <paramref name="row"/>[i] in order; only called when AVX-512F is supported.</summary>
    static abstract Vector512<float> Load16(byte* row, long i);

    static abstract Vector256<float> Load8(byte* row, long i);

    static abstract float Load1(byte* row, long i);

    /// <summary>Converts <paramref name="count"/> elements to f32.</summary>
    static abstract void ToSingle(byte* source, float* destination, int count);
}

internal readonly unsafe struct F32Loader : IWeightLoader
{
    public static int ElementSize => 4;

    public static bool Interleaved => false;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, long i, out Vector512<float> first, out Vector512<float> second)
    {
        first = Vector512.Load((float*)row + i);
        second = Vector512.Load((float*)row + i + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, long i) => Vector512.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, long i) => Vector256.Load((float*)row + i);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, long i) => ((float*)row)[i];

    public static void ToSingle(byte* source, float* destination, int count) =>
        Buffer.MemoryCopy(source, destination, (long)count * 4, (long)count * 4);
}

internal readonly unsafe struct BFloat16Loader : IWeightLoader
{
    public static int ElementSize => 2;

    public static bool Interleaved => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, long i, out Vector512<float> first, out Vector512<float> second)
    {
        var pairs = Vector512.Load((uint*)((ushort*)row + i));
        first = Avx512F.ShiftLeftLogical(pairs, 16).AsSingle();
        second = (pairs & Vector512.Create(0xFFFF_0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, long i) =>
        Avx512F.ShiftLeftLogical(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i)), 16).AsSingle();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, long i)
    {
        var (lower, upper) = Vector128.Widen(Vector128.Load((ushort*)row + i));
        return Vector256.ShiftLeft(Vector256.Create(lower, upper), 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, long i) => FloatConversion.BFloat16ToSingle(((ushort*)row)[i]);

    public static void ToSingle(byte* source, float* destination, int count) =>
        FloatConversion.BFloat16ToSingle(new ReadOnlySpan<ushort>(source, count), new Span<float>(destination, count));
}

internal readonly unsafe struct HalfLoader : IWeightLoader
{
    public static int ElementSize => 2;

    public static bool Interleaved => true;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Load32(byte* row, long i, out Vector512<float> first, out Vector512<float> second)
    {
        // The conversion reads only the low 16 bits of each lane.
        var pairs = Vector512.Load((uint*)((ushort*)row + i));
        first = FloatConversion.HalfToSingle(pairs);
        second = FloatConversion.HalfToSingle(Avx512F.ShiftRightLogical(pairs, 16));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> Load16(byte* row, long i) =>
        FloatConversion.HalfToSingle(Avx512F.ConvertToVector512UInt32(Vector256.Load((ushort*)row + i)));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> Load8(byte* row, long i)
    {
        var (lower, upper) = Vector128.Widen(Vector128.Load((ushort*)row + i));
        return FloatConversion.HalfToSingle(Vector256.Create(lower, upper));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Load1(byte* row, long i) => (float)((Half*)row)[i];

    public static void ToSingle(byte* source, float* destination, int count) =>
        TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, count), new Span<float>(destination, count));
}

/// <summary>Scalar reads and bulk conversion for small per-row vectors (biases, scales, norms) of any float dtype.</summary>
internal static unsafe class FloatReader
{
    public static float Read(byte* data, DType dtype, long i) => dtype switch
    {
        DType.F32 => ((float*)data)[i],
        DType.BF16 => FloatConversion.BFloat16ToSingle(((ushort*)data)[i]),
        DType.F16 => (float)((Half*)data)[i],
        _ => throw new ArgumentException($"Expected a floating-point dtype, got {dtype}."),
    };

    public static void ToSingle(byte* source, DType dtype, float* destination, int count)
    {
        switch (dtype)
        {
            case DType.F32: F32Loader.ToSingle(source, destination, count); break;
            case DType.BF16: BFloat16Loader.ToSingle(source, destination, count); break;
            case DType.F16: HalfLoader.ToSingle(source, destination, count); break;
            default: throw new ArgumentException($"Expected a floating-point dtype, got {dtype}.");
        }
    }
}
