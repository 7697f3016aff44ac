using System.Buffers;
using System.Runtime.InteropServices;
using Granary.Tensors.Numerics;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Training;

/// <summary>
/// Reads frozen base weights of a CPU model as f32: f32 tensors in place, f16/bf16 converted and MLX affine-quantized
/// weights dequantized (w = scale * q + bias) into a pooled buffer for the time of one use (QLoRA).
/// </summary>
internal static unsafe class FrozenWeights
{
    /// <summary>A read-only f32 view of a whole [out, in] weight; dispose to return a converted copy to the pool.</summary>
    public readonly struct View : IDisposable
    {
        private readonly float[]? _rented;
        private readonly GCHandle _pin;

        internal View(float* pointer, float[]? rented, GCHandle pin)
        {
            Pointer = pointer;
            _rented = rented;
            _pin = pin;
        }

        public float* Pointer { get; }

        /// <summary>A view of a pinned f32 array; disposing unpins it.</summary>
        public static View Pinned(GCHandle pin) => new((float*)pin.AddrOfPinnedObject(), null, pin);

        public void Dispose()
        {
            if (_pin.IsAllocated)
            {
                _pin.Free();
            }

            if (_rented is not null)
            {
                ArrayPool<float>.Shared.Return(_rented);
            }
        }
    }

    public static View Open(LinearWeight weight)
    {
        if (weight is DenseWeight { Weight.DType: DType.F32 } dense)
        {
            return new View((float*)CpuBackend.PointerOf(dense.Weight), null, default);
        }

        var count = checked(weight.OutFeatures * weight.InFeatures);
        var rented = ArrayPool<float>.Shared.Rent(count);
        var pin = GCHandle.Alloc(rented, GCHandleType.Pinned);
        ReadRows(weight, 0, weight.OutFeatures, rented.AsSpan(0, count));
        return new View((float*)pin.AddrOfPinnedObject(), rented, pin);
    }

    /// <summary>The whole weight as a new f32 array (full fine-tuning makes it trainable).</summary>
    public static float[] ToArray(LinearWeight weight)
    {
        var values = new float[checked(weight.OutFeatures * weight.InFeatures)];
        ReadRows(weight, 0, weight.OutFeatures, values);
        return values;
    }

    public static float[]? BiasToArray(LinearWeight weight) => weight.Bias is null ? null : ToArray(weight.Bias);

    /// <summary>Any f32/f16/bf16 CPU tensor as a new f32 array.</summary>
    public static float[] ToArray(Tensor tensor)
    {
        var values = new float[checked((int)tensor.ElementCount)];
        Convert(tensor, 0, values);
        return values;
    }

    /// <summary>Rows [first, first + count) of a weight into destination ([count, in]).</summary>
    public static void ReadRows(LinearWeight weight, int first, int count, Span<float> destination)
    {
        var columns = weight.InFeatures;
        switch (weight)
        {
            case DenseWeight dense:
                Convert(dense.Weight, (long)first * columns, destination[..(count * columns)]);
                break;
            case QuantizedWeight quantized:
                Dequantize(quantized, first, count, destination);
                break;
            default:
                throw new NotSupportedException($"Weight type {weight.GetType().Name} cannot be read for training.");
        }
    }

    private static void Convert(Tensor tensor, long offset, Span<float> destination)
    {
        switch (tensor.DType)
        {
            case DType.F32:
                CpuBackend.AsSpan<float>(tensor).Slice((int)offset, destination.Length).CopyTo(destination);
                break;
            case DType.BF16:
                FloatConversion.BFloat16ToSingle(CpuBackend.AsSpan<ushort>(tensor).Slice((int)offset, destination.Length), destination);
                break;
            case DType.F16:
                FloatConversion.HalfToSingle(CpuBackend.AsSpan<Half>(tensor).Slice((int)offset, destination.Length), destination);
                break;
            default:
                throw new NotSupportedException($"{tensor} cannot be read as f32.");
        }
    }

    private static void Dequantize(QuantizedWeight weight, int first, int count, Span<float> destination)
    {
        var columns = weight.InFeatures;
        var groups = columns / weight.GroupSize;
        var wordsPerRow = columns * weight.Bits / 32;
        var perWord = 32 / weight.Bits;
        var mask = (1u << weight.Bits) - 1;
        var codes = CpuBackend.AsSpan<uint>(weight.Codes);
        var scaleRow = new float[groups];
        var biasRow = new float[groups];
        for (var row = 0; row < count; row++)
        {
            var r = first + row;
            Convert(weight.Scales, (long)r * groups, scaleRow);
            Convert(weight.Biases, (long)r * groups, biasRow);
            var output = destination.Slice(row * columns, columns);
            var words = codes.Slice(r * wordsPerRow, wordsPerRow);
            for (var c = 0; c < columns; c++)
            {
                var code = (words[c / perWord] >> (c % perWord * weight.Bits)) & mask;
                var g = c / weight.GroupSize;
                output[c] = (scaleRow[g] * code) + biasRow[g];
            }
        }
    }
}
