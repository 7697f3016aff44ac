using System.Runtime.InteropServices;
using Granary.Tensors.Cpu;
using Granary.Tensors.Numerics;

namespace Granary.Tensors.Tests;

/// <summary>Random inputs and tensor helpers; references are computed from the exact values the backend sees.</summary>
internal static class TestData
{
    public static float[] Random(int count, int seed, float scale = 1f)
    {
        var random = new Random(seed);
        var values = new float[count];
        for (var i = 0; i < count; i++)
        {
            values[i] = (float)((random.NextDouble() * 2) - 1) * scale;
        }

        return values;
    }

    /// <summary>The values rounded to <paramref name="dtype"/> and back, i.e. exactly what a tensor of that dtype holds.</summary>
    public static float[] RoundTo(float[] values, DType dtype) => dtype switch
    {
        DType.F32 => (float[])values.Clone(),
        DType.BF16 => values.Select(v => FloatConversion.BFloat16ToSingle(FloatConversion.SingleToBFloat16(v))).ToArray(),
        DType.F16 => values.Select(v => (float)(Half)v).ToArray(),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    public static Tensor Upload(IComputeBackend backend, float[] values, DType dtype, params int[] shape) => dtype switch
    {
        DType.F32 => backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, shape),
        DType.BF16 => backend.Upload(MemoryMarshal.AsBytes(values.Select(FloatConversion.SingleToBFloat16).ToArray().AsSpan()), DType.BF16, shape),
        DType.F16 => backend.Upload(MemoryMarshal.AsBytes(values.Select(v => (Half)v).ToArray().AsSpan()), DType.F16, shape),
        _ => throw new ArgumentOutOfRangeException(nameof(dtype)),
    };

    public static Tensor UploadInts(IComputeBackend backend, int[] values, params int[] shape) =>
        backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.I32, shape);

    public static float[] Read(Tensor tensor) => CpuBackend.AsSpan<float>(tensor).ToArray();

    /// <summary>
    /// MLX affine quantization of a row-major [rows, columns] matrix: per group scale = (max - min) / (2^bits - 1),
    /// bias = min, q = round((w - bias) / scale). Returns the weight and the dequantized values it represents
    /// (from the scales and biases as rounded to <paramref name="scaleDType"/>).
    /// </summary>
    public static (QuantizedWeight Weight, double[] Dequantized) Quantize(
        IComputeBackend backend, float[] weights, int rows, int columns, int bits, int groupSize, DType scaleDType)
    {
        var groups = columns / groupSize;
        var maxCode = (1 << bits) - 1;
        var scales = new float[rows * groups];
        var biases = new float[rows * groups];
        var codes = new uint[rows * columns * bits / 32];
        var dequantized = new double[rows * columns];
        for (var r = 0; r < rows; r++)
        {
            for (var g = 0; g < groups; g++)
            {
                var group = weights.AsSpan((r * columns) + (g * groupSize), groupSize);
                var min = group.ToArray().Min();
                var max = group.ToArray().Max();
                var scale = (max - min) / maxCode;
                scales[(r * groups) + g] = scale;
                biases[(r * groups) + g] = min;
            }
        }

        var storedScales = RoundTo(scales, scaleDType);
        var storedBiases = RoundTo(biases, scaleDType);
        for (var r = 0; r < rows; r++)
        {
            for (var i = 0; i < columns; i++)
            {
                var g = (r * groups) + (i / groupSize);
                var q = (uint)Math.Clamp(Math.Round((weights[(r * columns) + i] - biases[g]) / scales[g]), 0, maxCode);
                var bit = ((long)r * columns * bits) + ((long)i * bits);
                codes[bit / 32] |= q << (int)(bit % 32);
                dequantized[(r * columns) + i] = ((double)storedScales[g] * q) + storedBiases[g];
            }
        }

        var weight = new QuantizedWeight(
            backend.Upload(MemoryMarshal.AsBytes(codes.AsSpan()), DType.U32, rows, columns * bits / 32),
            Upload(backend, scales, scaleDType, rows, groups),
            Upload(backend, biases, scaleDType, rows, groups),
            bits,
            groupSize);
        return (weight, dequantized);
    }

    /// <summary>
    /// Asserts |actual - expected| ≤ relative * magnitude + 1e-7 per element, where magnitude is the sum of absolute
    /// terms that produced the element: the f32 rounding error of a sum of products is bounded relative to it.
    /// </summary>
    public static void AssertClose(double[] expected, double[] magnitude, float[] actual, double relative)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
        {
            var tolerance = (relative * magnitude[i]) + 1e-7;
            Assert.True(
                Math.Abs(actual[i] - expected[i]) <= tolerance,
                $"Element {i}: expected {expected[i]:R}, got {actual[i]:R} (tolerance {tolerance:E2}).");
        }
    }

    public static void AssertClose(double[] expected, float[] actual, double relative) =>
        AssertClose(expected, expected.Select(Math.Abs).ToArray(), actual, relative);
}
