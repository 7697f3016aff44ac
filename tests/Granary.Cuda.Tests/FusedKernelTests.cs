using System.Runtime.InteropServices;
using Granary.Tensors;
using Granary.Tensors.Cuda;

namespace Granary.Cuda.Tests;

/// <summary>
/// The decode fusions of <see cref="CudaBackend"/> against the unfused kernels they replace (themselves checked against
/// the CPU backend in <see cref="KernelTests"/>), on random data with outputs poisoned with NaN; and a decode step with
/// its position in device memory captured once and replayed at successive positions.
/// </summary>
[Collection("gpu")]
public sealed class FusedKernelTests
{
    private const double Tolerance = 2e-6;

    [Theory]
    [InlineData(1, 1024, DType.BF16, true)]
    [InlineData(3, 1000, DType.F32, true)]
    [InlineData(2, 4099, DType.F16, false)]
    public void AddRmsNormMatchesAddThenRmsNorm(int rows, int columns, DType weightType, bool withDelta)
    {
        var gpu = Gpu.Backend;
        var hidden = Random32.Floats(rows * columns, 60, 3f);
        using var residual = Floats(hidden, DType.F32, rows, columns);
        using var expectedResidual = Floats(hidden, DType.F32, rows, columns);
        using var delta = Floats(Random32.Floats(rows * columns, 61), DType.F32, rows, columns);
        using var weight = Floats(Random32.Floats(columns, 62), weightType, columns);
        using var expected = Pair.Output(rows, columns);
        using var actual = Pair.Output(rows, columns);
        if (withDelta)
        {
            gpu.Add(expectedResidual, delta, expectedResidual);
        }

        gpu.RmsNorm(expectedResidual, weight, 1e-6f, expected.Gpu);
        gpu.AddRmsNorm(residual, withDelta ? delta : null, weight, 1e-6f, actual.Gpu);
        Pair.AssertClose(Pair.Read(expectedResidual), Pair.Read(residual), Tolerance);
        Pair.AssertClose(Pair.Read(expected.Gpu), Pair.Read(actual.Gpu), Tolerance, 1e-6);
    }

    [Theory]
    [InlineData(1, 8, 2, 128, true)]
    [InlineData(3, 4, 4, 64, false)]
    [InlineData(2, 6, 2, 32, true)]
    public void QkNormRopeAppendMatchesNormRopeAndCopies(int tokens, int heads, int kvHeads, int headDim, bool withNorms)
    {
        var gpu = Gpu.Backend;
        const int Capacity = 300;
        int[] positionValues = [.. Enumerable.Range(0, tokens).Select(t => 7 + (113 * t))];
        var width = (heads + (2 * kvHeads)) * headDim;
        var qkvValues = Random32.Floats(tokens * width, 63, 2f);
        float[] Columns(int start, int count) => [.. Enumerable.Range(0, tokens).SelectMany(t => qkvValues.AsSpan((t * width) + start, count).ToArray())];
        var frequencies = Enumerable.Range(0, headDim / 2).Select(j => (float)Math.Pow(1e6, -2.0 * j / headDim)).ToArray();
        var cacheValues = Random32.Floats(Capacity * kvHeads * headDim, 64);

        using var qkv = Floats(qkvValues, DType.F32, tokens, width);
        using var positions = gpu.Upload(MemoryMarshal.AsBytes(positionValues.AsSpan()), DType.I32, tokens);
        using var inverse = Floats(frequencies, DType.F32, headDim / 2);
        using var queryNorm = Floats(Random32.Floats(headDim, 65), DType.BF16, headDim);
        using var keyNorm = Floats(Random32.Floats(headDim, 66), DType.BF16, headDim);
        using var keys = Floats(cacheValues, DType.F32, Capacity, kvHeads, headDim);
        using var values = Floats(cacheValues, DType.F32, Capacity, kvHeads, headDim);
        using var expectedKeys = Floats(cacheValues, DType.F32, Capacity, kvHeads, headDim);
        using var expectedValues = Floats(cacheValues, DType.F32, Capacity, kvHeads, headDim);
        using var query = Pair.Output(tokens, heads, headDim);

        // The unfused path: q and k normed per head and rotated, then k and v copied into the caches row by row.
        using var expectedQuery = Floats(Columns(0, heads * headDim), DType.F32, tokens, heads, headDim);
        using var key = Floats(Columns(heads * headDim, kvHeads * headDim), DType.F32, tokens, kvHeads, headDim);
        using var value = Floats(Columns((heads + kvHeads) * headDim, kvHeads * headDim), DType.F32, tokens, kvHeads, headDim);
        if (withNorms)
        {
            var flatQuery = expectedQuery.Reshape(tokens * heads, headDim);
            var flatKey = key.Reshape(tokens * kvHeads, headDim);
            gpu.RmsNorm(flatQuery, queryNorm, 1e-6f, flatQuery);
            gpu.RmsNorm(flatKey, keyNorm, 1e-6f, flatKey);
        }

        gpu.Rope(expectedQuery, positions, inverse, 1.25f);
        gpu.Rope(key, positions, inverse, 1.25f);
        for (var t = 0; t < tokens; t++)
        {
            gpu.Copy(key.Slice(t, 1), expectedKeys.Slice(positionValues[t], 1));
            gpu.Copy(value.Slice(t, 1), expectedValues.Slice(positionValues[t], 1));
        }

        gpu.QkNormRopeAppend(
            qkv, withNorms ? queryNorm : null, withNorms ? keyNorm : null, 1e-6f, positions, inverse, 1.25f, query.Gpu, keys, values);
        Pair.AssertClose(Pair.Read(expectedQuery), Pair.Read(query.Gpu), Tolerance, 1e-6);
        Pair.AssertClose(Pair.Read(expectedKeys), Pair.Read(keys), Tolerance, 1e-6);
        Assert.Equal(Pair.Read(expectedValues), Pair.Read(values));
    }

    [Theory]
    [InlineData(1, DType.BF16, 1024, 701)]
    [InlineData(3, DType.BF16, 1024, 512)]
    [InlineData(8, DType.F16, 256, 96)]
    [InlineData(2, DType.F32, 1001, 64)]
    public void SwiGluLinearMatchesGateUpAndSiluMul(int tokens, DType weightType, int inFeatures, int inner)
    {
        var gpu = Gpu.Backend;
        using var input = Floats(Random32.Floats(tokens * inFeatures, 67), DType.F32, tokens, inFeatures);
        using var gateUp = Floats(Random32.Floats(2 * inner * inFeatures, 68, 0.05f), weightType, 2 * inner, inFeatures);
        using var gate = gpu.Allocate(DType.F32, tokens, inner);
        using var up = gpu.Allocate(DType.F32, tokens, inner);
        using var expected = gpu.Allocate(DType.F32, tokens, inner);
        using var actual = Pair.Output(tokens, inner);
        gpu.Linear(input, new DenseWeight(gateUp.Slice(0, inner)), gate);
        gpu.Linear(input, new DenseWeight(gateUp.Slice(inner, inner)), up);
        gpu.SiluMul(gate, up, expected);
        gpu.SwiGluLinear(input, new DenseWeight(gateUp), actual.Gpu);
        Pair.AssertClose(Pair.Read(expected), Pair.Read(actual.Gpu), Tolerance, 1e-6);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(100)]
    [InlineData(3000)]
    public void AttentionAtDevicePositionMatchesHostPosition(int start)
    {
        var gpu = Gpu.Backend;
        const int Capacity = 4096, Heads = 8, KvHeads = 2, HeadDim = 128;
        using var query = Floats(Random32.Floats(Heads * HeadDim, 69), DType.F32, 1, Heads, HeadDim);
        using var keys = Floats(Random32.Floats(Capacity * KvHeads * HeadDim, 70), DType.F32, Capacity, KvHeads, HeadDim);
        using var values = Floats(Random32.Floats(Capacity * KvHeads * HeadDim, 71), DType.F32, Capacity, KvHeads, HeadDim);
        using var position = gpu.Upload(MemoryMarshal.AsBytes(new[] { start }.AsSpan()), DType.I32, 1);
        using var expected = Pair.Output(1, Heads, HeadDim);
        using var actual = Pair.Output(1, Heads, HeadDim);
        gpu.Attention(query, keys, values, start, 0.088f, expected.Gpu);
        gpu.Attention(query, keys, values, position, Capacity, 0.088f, actual.Gpu);
        Pair.AssertClose(Pair.Read(expected.Gpu), Pair.Read(actual.Gpu), 1e-5, 1e-5);
    }

    /// <summary>A captured attention step reads its position from the device, so one graph serves every decode step.</summary>
    [Fact]
    public void CapturedStepAdvancesItsPositionOnTheDevice()
    {
        var gpu = Gpu.Backend;
        const int Capacity = 256, Heads = 4, KvHeads = 2, HeadDim = 64, First = 40, Steps = 3;
        var width = (Heads + (2 * KvHeads)) * HeadDim;
        var frequencies = Enumerable.Range(0, HeadDim / 2).Select(j => (float)Math.Pow(1e4, -2.0 * j / HeadDim)).ToArray();
        var cacheValues = Random32.Floats(Capacity * KvHeads * HeadDim, 72);
        using var inverse = Floats(frequencies, DType.F32, HeadDim / 2);
        using var norm = Floats(Random32.Floats(HeadDim, 73), DType.BF16, HeadDim);
        using var qkv = gpu.Allocate(DType.F32, 1, width);
        using var query = gpu.Allocate(DType.F32, 1, Heads, HeadDim);
        using var output = gpu.Allocate(DType.F32, 1, Heads, HeadDim);
        using var position = gpu.Upload(MemoryMarshal.AsBytes(new[] { First }.AsSpan()), DType.I32, 1);

        float[][] Run(Tensor keys, Tensor values, Action step)
        {
            var outputs = new float[Steps][];
            for (var s = 0; s < Steps; s++)
            {
                gpu.FillUniform(qkv, -2f, 2f, 80 + (ulong)s);
                gpu.FillUniform(output, float.NaN, float.NaN, 0);
                step();
                outputs[s] = [.. Pair.Read(output), .. Pair.Read(keys)];
            }

            return outputs;
        }

        void Step(Tensor keys, Tensor values)
        {
            gpu.QkNormRopeAppend(qkv, norm, norm, 1e-6f, position, inverse, 1f, query, keys, values);
            gpu.Attention(query, keys, values, position, Capacity, 0.125f, output);
            gpu.AdvancePositions(position, 1);
        }

        using var eagerKeys = Floats(cacheValues, DType.F32, Capacity, KvHeads, HeadDim);
        using var eagerValues = Floats(cacheValues, DType.F32, Capacity, KvHeads, HeadDim);
        var eager = Run(eagerKeys, eagerValues, () => Step(eagerKeys, eagerValues));
        Assert.Equal(new[] { First + Steps }, Pair.ReadInts(position));

        using var keys = Floats(cacheValues, DType.F32, Capacity, KvHeads, HeadDim);
        using var values = Floats(cacheValues, DType.F32, Capacity, KvHeads, HeadDim);
        using var graph = gpu.Capture(() => Step(keys, values));
        using var first = gpu.Upload(MemoryMarshal.AsBytes(new[] { First }.AsSpan()), DType.I32, 1);
        gpu.Copy(first, position);
        var replayed = Run(keys, values, graph.Launch);
        for (var s = 0; s < Steps; s++)
        {
            Assert.Equal(eager[s], replayed[s]);
        }
    }

    private static Tensor Floats(float[] values, DType dtype, params int[] shape) => Gpu.Backend.Upload(Pair.Encode(values, dtype), dtype, shape);
}
