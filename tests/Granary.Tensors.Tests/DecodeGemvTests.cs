using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

/// <summary>
/// One-token linears of 16-bit weights (the sequential decode GEMV) at widths that reach each of its tails: the
/// 64-element loop, a 32-block, a 16-block and single elements, with row counts that leave rows outside groups of four.
/// </summary>
public sealed class DecodeGemvTests : IDisposable
{
    // As in LinearTests, scaled for up to 1030 inputs (f32 rounding of at most about in * 2^-24 of the magnitude);
    // still far below any indexing or conversion error.
    private const double Relative = 1e-4;

    private readonly CpuBackend _backend = new(threads: 2);

    [Theory]
    [InlineData(DType.BF16, 80, 11)]
    [InlineData(DType.BF16, 112, 7)]
    [InlineData(DType.BF16, 1030, 37)]
    [InlineData(DType.F16, 112, 9)]
    [InlineData(DType.F16, 1030, 37)]
    public void MatchesReference(DType dtype, int inFeatures, int outFeatures)
    {
        var w = TestData.RoundTo(TestData.Random(outFeatures * inFeatures, 4), dtype);
        var x = TestData.Random(inFeatures, 5);
        using var weight = new DenseWeight(TestData.Upload(_backend, w, dtype, outFeatures, inFeatures));
        using var input = TestData.Upload(_backend, x, DType.F32, 1, inFeatures);
        using var output = _backend.Allocate(DType.F32, 1, outFeatures);

        _backend.Linear(input, weight, output);

        var (expected, magnitude) = LinearTests.Reference(w.Select(v => (double)v).ToArray(), x, null, 1, inFeatures, outFeatures);
        TestData.AssertClose(expected, magnitude, TestData.Read(output), Relative);
    }

    public void Dispose() => _backend.Dispose();
}
