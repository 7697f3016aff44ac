using System.Numerics;
using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Granary.Tensors;

namespace Granary.Collectives;

/// <summary>
/// Element-wise combining of contributions. f16 and bf16 are widened to f32, combined, and rounded back
/// (round to nearest even), so a chain of additions never accumulates in half precision.
/// </summary>
internal static unsafe class Reduction
{
    /// <summary>Elements widened at a time; the f32 blocks live on the stack.</summary>
    private const int Block = 512;

    public static bool IsSupported(DType dtype) => dtype is DType.F32 or DType.F16 or DType.BF16 or DType.I32;

    /// <summary>accumulator = op(accumulator, contribution) over <paramref name="bytes"/> bytes.</summary>
    public static void Combine(byte* accumulator, byte* contribution, long bytes, DType dtype, ReduceOp op)
    {
        while (bytes > 0)
        {
            // Span lengths are int; giant buffers go through in pieces.
            var piece = (int)Math.Min(bytes, 1 << 30);
            CombinePiece(accumulator, contribution, piece, dtype, op);
            accumulator += piece;
            contribution += piece;
            bytes -= piece;
        }
    }

    private static void CombinePiece(byte* accumulator, byte* contribution, int bytes, DType dtype, ReduceOp op)
    {
        switch (dtype)
        {
            case DType.F32:
                Apply(new Span<float>(accumulator, bytes / 4), new ReadOnlySpan<float>(contribution, bytes / 4), op);
                break;
            case DType.I32:
                Apply(new Span<int>(accumulator, bytes / 4), new ReadOnlySpan<int>(contribution, bytes / 4), op);
                break;
            case DType.F16 or DType.BF16:
            {
                var count = bytes / 2;
                var acc = stackalloc float[Block];
                var other = stackalloc float[Block];
                for (var i = 0; i < count; i += Block)
                {
                    var n = Math.Min(Block, count - i);
                    var accSpan = new Span<float>(acc, n);
                    var otherSpan = new Span<float>(other, n);
                    Widen(accumulator + (2L * i), accSpan, dtype);
                    Widen(contribution + (2L * i), otherSpan, dtype);
                    Apply(accSpan, otherSpan, op);
                    Narrow(accSpan, accumulator + (2L * i), dtype);
                }

                break;
            }

            default:
                throw new NotSupportedException($"Reduction over {dtype} is not supported (f32, f16, bf16, i32 are).");
        }
    }

    /// <summary>
    /// destination = op over sources[0..] in rank order, each source <paramref name="bytes"/> long. Every rank that
    /// runs this over the same inputs gets bit-identical results; half types round once, at the end.
    /// The destination may alias sources[0] but no other source.
    /// </summary>
    public static void CombineOrdered(byte* destination, ReadOnlySpan<nint> sources, int bytes, DType dtype, ReduceOp op)
    {
        if (dtype is DType.F32 or DType.I32)
        {
            if (sources.Length == 1)
            {
                if (destination != (byte*)sources[0])
                {
                    Buffer.MemoryCopy((byte*)sources[0], destination, bytes, bytes);
                }

                return;
            }

            // The first two sources combine straight into the destination: one pass over it, not a copy and a pass.
            if (dtype == DType.F32)
            {
                Apply(new ReadOnlySpan<float>((void*)sources[0], bytes / 4), new ReadOnlySpan<float>((void*)sources[1], bytes / 4), new Span<float>(destination, bytes / 4), op);
            }
            else
            {
                Apply(new ReadOnlySpan<int>((void*)sources[0], bytes / 4), new ReadOnlySpan<int>((void*)sources[1], bytes / 4), new Span<int>(destination, bytes / 4), op);
            }

            for (var k = 2; k < sources.Length; k++)
            {
                CombinePiece(destination, (byte*)sources[k], bytes, dtype, op);
            }

            return;
        }

        if (dtype is not (DType.F16 or DType.BF16))
        {
            throw new NotSupportedException($"Reduction over {dtype} is not supported (f32, f16, bf16, i32 are).");
        }

        var elements = bytes / 2;
        var acc = stackalloc float[Block];
        var other = stackalloc float[Block];
        for (var i = 0; i < elements; i += Block)
        {
            var n = Math.Min(Block, elements - i);
            var accSpan = new Span<float>(acc, n);
            var otherSpan = new Span<float>(other, n);
            Widen((byte*)sources[0] + (2L * i), accSpan, dtype);
            for (var k = 1; k < sources.Length; k++)
            {
                Widen((byte*)sources[k] + (2L * i), otherSpan, dtype);
                Apply(accSpan, otherSpan, op);
            }

            Narrow(accSpan, destination + (2L * i), dtype);
        }
    }

    private static void Apply<T>(Span<T> accumulator, ReadOnlySpan<T> contribution, ReduceOp op)
        where T : unmanaged, INumber<T> =>
        Apply(accumulator, contribution, accumulator, op);

    /// <summary>destination = op(first, second); the destination may be either input (the same elements), not a shifted one.</summary>
    private static void Apply<T>(ReadOnlySpan<T> first, ReadOnlySpan<T> second, Span<T> destination, ReduceOp op)
        where T : unmanaged, INumber<T>
    {
        switch (op)
        {
            case ReduceOp.Sum:
                TensorPrimitives.Add(first, second, destination);
                break;
            case ReduceOp.Max:
                TensorPrimitives.Max(first, second, destination);
                break;
            case ReduceOp.Min:
                TensorPrimitives.Min(first, second, destination);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(op), op, null);
        }
    }

    private static void Widen(byte* source, Span<float> destination, DType dtype)
    {
        if (dtype == DType.F16)
        {
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, destination.Length), destination);
        }
        else
        {
            BFloat16ToSingle(new ReadOnlySpan<ushort>(source, destination.Length), destination);
        }
    }

    private static void Narrow(ReadOnlySpan<float> source, byte* destination, DType dtype)
    {
        if (dtype == DType.F16)
        {
            TensorPrimitives.ConvertToHalf(source, new Span<Half>(destination, source.Length));
        }
        else
        {
            SingleToBFloat16(source, new Span<ushort>(destination, source.Length));
        }
    }

    /// <summary>bf16 is the upper half of an f32, so widening is a shift.</summary>
    public static void BFloat16ToSingle(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        var bits = MemoryMarshal.Cast<float, uint>(destination);
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref var s = ref MemoryMarshal.GetReference(source);
            ref var d = ref MemoryMarshal.GetReference(bits);
            for (; i <= source.Length - Vector256<uint>.Count; i += Vector256<uint>.Count)
            {
                var halves = Vector128.LoadUnsafe(ref s, (nuint)i);
                var (lower, upper) = Vector128.Widen(halves);
                (Vector256.Create(lower, upper) << 16).StoreUnsafe(ref d, (nuint)i);
            }
        }

        for (; i < source.Length; i++)
        {
            bits[i] = (uint)source[i] << 16;
        }
    }

    /// <summary>Rounds f32 to bf16, to nearest with ties to even; NaN stays NaN (quietened).</summary>
    public static void SingleToBFloat16(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        var bits = MemoryMarshal.Cast<float, uint>(source);
        var i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            ref var s = ref MemoryMarshal.GetReference(bits);
            ref var d = ref MemoryMarshal.GetReference(destination);
            for (; i <= bits.Length - Vector256<ushort>.Count; i += Vector256<ushort>.Count)
            {
                var lower = RoundToBFloat16(Vector256.LoadUnsafe(ref s, (nuint)i));
                var upper = RoundToBFloat16(Vector256.LoadUnsafe(ref s, (nuint)(i + Vector256<uint>.Count)));
                Vector256.Narrow(lower, upper).StoreUnsafe(ref d, (nuint)i);
            }
        }

        for (; i < bits.Length; i++)
        {
            destination[i] = RoundToBFloat16(bits[i]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundToBFloat16(Vector256<uint> bits)
    {
        var rounded = (bits + Vector256.Create(0x7FFFu) + ((bits >> 16) & Vector256<uint>.One)) >> 16;
        var isNaN = Vector256.GreaterThan(bits & Vector256.Create(0x7FFFFFFFu), Vector256.Create(0x7F800000u));
        return Vector256.ConditionalSelect(isNaN, (bits >> 16) | Vector256.Create(0x40u), rounded);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort RoundToBFloat16(uint bits) =>
        (bits & 0x7FFFFFFF) > 0x7F800000
            ? (ushort)((bits >> 16) | 0x40)
            : (ushort)((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16);
}
