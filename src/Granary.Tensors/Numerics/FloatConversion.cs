using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Granary.Tensors.Numerics;

/// <summary>
/// Conversions between f32 and the 16-bit float formats weights are stored in. .NET 10 has no BFloat16 type,
/// so bf16 values are carried as their raw <see cref="ushort"/> bits (the upper half of an f32).
/// </summary>
public static class FloatConversion
{
    // Rebiases an f16 exponent (bias 15) to f32 (bias 127).
    private const float TwoPow112 = 5.192296858534828e33f;

    /// <summary>Widens one bf16 value (raw bits) to f32 exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float BFloat16ToSingle(ushort bits) => BitConverter.Int32BitsToSingle(bits << 16);

    /// <summary>Rounds an f32 to bf16 bits, round-to-nearest-even; NaN stays a (quiet) NaN.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort SingleToBFloat16(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        if ((bits & 0x7FFF_FFFFu) > 0x7F80_0000u)
        {
            return (ushort)((bits >> 16) | 0x0040u);
        }

        return (ushort)((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
    }

    /// <summary>Widens one f16 value (raw bits) to f32 exactly.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float HalfToSingle(ushort bits) => (float)BitConverter.UInt16BitsToHalf(bits);

    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        var i = 0;
        ref var src = ref MemoryMarshal.GetReference(source);
        ref var dst = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(destination));
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i + 32 <= source.Length; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref src, (nuint)i));
                Vector512.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
                Vector512.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + 16));
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= source.Length; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref src, (nuint)i));
                Vector256.ShiftLeft(lo, 16).StoreUnsafe(ref dst, (nuint)i);
                Vector256.ShiftLeft(hi, 16).StoreUnsafe(ref dst, (nuint)(i + 8));
            }
        }

        for (; i < source.Length; i++)
        {
            destination[i] = BFloat16ToSingle(source[i]);
        }
    }

    public static void SingleToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        CheckLengths(source.Length, destination.Length);
        var i = 0;
        ref var src = ref Unsafe.As<float, uint>(ref MemoryMarshal.GetReference(source));
        ref var dst = ref MemoryMarshal.GetReference(destination);
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i + 32 <= source.Length; i += 32)
            {
                var lo = RoundToBFloat16(Vector512.LoadUnsafe(ref src, (nuint)i));
                var hi = RoundToBFloat16(Vector512.LoadUnsafe(ref src, (nuint)(i + 16)));
                Vector512.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 16 <= source.Length; i += 16)
            {
                var lo = RoundToBFloat16(Vector256.LoadUnsafe(ref src, (nuint)i));
                var hi = RoundToBFloat16(Vector256.LoadUnsafe(ref src, (nuint)(i + 8)));
                Vector256.Narrow(lo, hi).StoreUnsafe(ref dst, (nuint)i);
            }
        }

        for (; i < source.Length; i++)
        {
            destination[i] = SingleToBFloat16(source[i]);
        }
    }

    public static void HalfToSingle(ReadOnlySpan<Half> source, Span<float> destination)
    {
        CheckLengths(source.Length, destination.Length);
        System.Numerics.Tensors.TensorPrimitives.ConvertToSingle(source, destination);
    }

    public static void SingleToHalf(ReadOnlySpan<float> source, Span<Half> destination)
    {
        CheckLengths(source.Length, destination.Length);
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(source, destination);
    }

    /// <summary>
    /// Widens 16 f16 values held in the low halves of <paramref name="bits"/> to f32. Multiplying by 2^112 rebiases the
    /// exponent and turns f16 subnormals into exact f32 normals; infinities and NaNs are patched to exponent 255.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector512<float> HalfToSingle(Vector512<uint> bits)
    {
        var magnitude = (bits & Vector512.Create(0x7FFFu)) << 13;
        var value = magnitude.AsSingle() * Vector512.Create(TwoPow112);
        var special = Vector512.GreaterThanOrEqual(magnitude, Vector512.Create(0x7C00u << 13));
        var patched = Vector512.ConditionalSelect(special, magnitude | Vector512.Create(0x7F80_0000u), value.AsUInt32());
        return (patched | ((bits & Vector512.Create(0x8000u)) << 16)).AsSingle();
    }

    /// <inheritdoc cref="HalfToSingle(Vector512{uint})"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static Vector256<float> HalfToSingle(Vector256<uint> bits)
    {
        var magnitude = (bits & Vector256.Create(0x7FFFu)) << 13;
        var value = magnitude.AsSingle() * Vector256.Create(TwoPow112);
        var special = Vector256.GreaterThanOrEqual(magnitude, Vector256.Create(0x7C00u << 13));
        var patched = Vector256.ConditionalSelect(special, magnitude | Vector256.Create(0x7F80_0000u), value.AsUInt32());
        return (patched | ((bits & Vector256.Create(0x8000u)) << 16)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> RoundToBFloat16(Vector512<uint> bits)
    {
        var rounded = (bits + Vector512.Create(0x7FFFu) + ((bits >> 16) & Vector512<uint>.One)) >> 16;
        var isNaN = Vector512.GreaterThan(bits & Vector512.Create(0x7FFF_FFFFu), Vector512.Create(0x7F80_0000u));
        return Vector512.ConditionalSelect(isNaN, (bits >> 16) | Vector512.Create(0x0040u), rounded);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundToBFloat16(Vector256<uint> bits)
    {
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256<uint>.One)) >> 16;
        var isNaN = Vector256.GreaterThan(bits & Vector256.Create(0x7FFF_FFFFu), Vector256.Create(0x7F80_0000u));
        return Vector256.ConditionalSelect(isNaN, (bits >> 16) | Vector256.Create(0x0040u), rounded);
    }

    private static void CheckLengths(int source, int destination)
    {
        if (source != destination)
        {
            throw new ArgumentException($"Source has {source} elements but destination has {destination}.");
        }
    }
}
