using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed class ElementwiseTests : IDisposable
{
    // Each output is a short chain of f32 operations (a few ulps, ~1e-6 relative); 1e-5 leaves margin for the
    // vectorised exp/sigmoid (within a few ulps) and still catches any wrong index or formula.
    private const double Relative = 1e-5;

    private readonly CpuBackend _backend = new(threads: 2);

    [Theory]
    [InlineData(DType.F32, 5, 67)]
    [InlineData(DType.BF16, 1, 67)]
    [InlineData(DType.F16, 3, 200)]
    [InlineData(DType.BF16, 1200, 64)]
    public void RmsNormMatchesReference(DType weightDType, int rows, int columns)
    {
        const float Epsilon = 1e-5f;
        var x = TestData.Random(rows * columns, 10, 3f);
        var w = TestData.RoundTo(TestData.Random(columns, 11), weightDType);
        using var input = TestData.Upload(_backend, x, DType.F32, rows, columns);
        using var weight = TestData.Upload(_backend, w, weightDType, columns);
        using var output = _backend.Allocate(DType.F32, rows, columns);

        _backend.RmsNorm(input, weight, Epsilon, output);

        var expected = new double[rows * columns];
        for (var r = 0; r < rows; r++)
        {
            var meanSquare = 0.0;
            for (var c = 0; c < columns; c++)
            {
                meanSquare += (double)x[(r * columns) + c] * x[(r * columns) + c];
            }

            var inverse = 1 / Math.Sqrt((meanSquare / columns) + Epsilon);
            for (var c = 0; c < columns; c++)
            {
                expected[(r * columns) + c] = x[(r * columns) + c] * inverse * w[c];
            }
        }

        TestData.AssertClose(expected, TestData.Read(output), Relative);
    }

    [Theory]
    [InlineData(1f)]
    [InlineData(0.75f)]
    public void RopeWithLlama3FrequenciesMatchesReference(float attentionScaling)
    {
        const int Heads = 3;
        const int HeadDim = 64;
        int[] positions = [0, 1, 7, 1000, 8191, 65000];
        var n = positions.Length;
        var inverseFrequency = Llama3InverseFrequency(HeadDim, 500000, factor: 8, lowFrequencyFactor: 1, highFrequencyFactor: 4, originalContext: 8192);
        var x = TestData.Random(n * Heads * HeadDim, 12);
        using var tensor = TestData.Upload(_backend, x, DType.F32, n, Heads, HeadDim);
        using var positionTensor = TestData.UploadInts(_backend, positions, n);
        using var frequencies = TestData.Upload(_backend, inverseFrequency, DType.F32, HeadDim / 2);

        _backend.Rope(tensor, positionTensor, frequencies, attentionScaling);

        var (expected, magnitude) = RopeReference(x, positions, Heads, HeadDim, inverseFrequency, attentionScaling);
        TestData.AssertClose(expected, magnitude, TestData.Read(tensor), Relative);
    }

    [Fact]
    public void RopeAtOnePositionFollowsEachCallsFrequencies()
    {
        // The backend keeps one position's angles between calls (every layer of a decode step shares them); a call
        // with other frequencies at that position, from a tensor that may reuse the freed one's memory, must not get them.
        const int Heads = 2;
        const int HeadDim = 32;
        int[] positions = [300];
        var x = TestData.Random(Heads * HeadDim, 14);
        using var positionTensor = TestData.UploadInts(_backend, positions, 1);
        foreach (var theta in new[] { 10000.0, 1000000.0, 10000.0 })
        {
            var inverseFrequency = Enumerable.Range(0, HeadDim / 2).Select(j => (float)(1 / Math.Pow(theta, 2.0 * j / HeadDim))).ToArray();
            using var tensor = TestData.Upload(_backend, x, DType.F32, 1, Heads, HeadDim);
            using var frequencies = TestData.Upload(_backend, inverseFrequency, DType.F32, HeadDim / 2);

            _backend.Rope(tensor, positionTensor, frequencies, 1f);

            var (expected, magnitude) = RopeReference(x, positions, Heads, HeadDim, inverseFrequency, 1f);
            TestData.AssertClose(expected, magnitude, TestData.Read(tensor), Relative);
        }
    }

    /// <summary>torch's rotate-half rope in double, and per element |a| + |b| of the pair it mixes (the error scale).</summary>
    private static (double[] Expected, double[] Magnitude) RopeReference(float[] x, int[] positions, int heads, int headDim, float[] inverseFrequency, float attentionScaling)
    {
        var expected = new double[x.Length];
        var magnitude = new double[x.Length];
        var half = headDim / 2;
        for (var t = 0; t < positions.Length; t++)
        {
            for (var h = 0; h < heads; h++)
            {
                var offset = ((t * heads) + h) * headDim;
                for (var j = 0; j < half; j++)
                {
                    // torch forms the angle in f32 (float position times f32 inverse frequency).
                    var angle = (double)((float)positions[t] * inverseFrequency[j]);
                    var c = Math.Cos(angle) * attentionScaling;
                    var s = Math.Sin(angle) * attentionScaling;
                    double a = x[offset + j], b = x[offset + j + half];
                    expected[offset + j] = (a * c) - (b * s);
                    expected[offset + j + half] = (b * c) + (a * s);
                    magnitude[offset + j] = magnitude[offset + j + half] = Math.Abs(a) + Math.Abs(b);
                }
            }
        }

        return (expected, magnitude);
    }

    [Theory]
    [InlineData(5, 67)]
    [InlineData(2, 151)]
    public void SoftmaxMatchesReference(int rows, int columns)
    {
        var x = TestData.Random(rows * columns, 13, 20f);
        using var tensor = TestData.Upload(_backend, x, DType.F32, rows, columns);

        _backend.Softmax(tensor);

        var expected = new double[x.Length];
        for (var r = 0; r < rows; r++)
        {
            var row = x.AsSpan(r * columns, columns).ToArray();
            var max = row.Max();
            var sum = row.Sum(v => Math.Exp(v - max));
            for (var c = 0; c < columns; c++)
            {
                expected[(r * columns) + c] = Math.Exp(row[c] - max) / sum;
            }
        }

        TestData.AssertClose(expected, TestData.Read(tensor), Relative);
    }

    [Fact]
    public void SiluMulMatchesReference()
    {
        var g = TestData.Random(5 * 1100, 14, 8f);
        var u = TestData.Random(5 * 1100, 15, 2f);
        using var gate = TestData.Upload(_backend, g, DType.F32, 5, 1100);
        using var up = TestData.Upload(_backend, u, DType.F32, 5, 1100);
        using var output = _backend.Allocate(DType.F32, 5, 1100);

        _backend.SiluMul(gate, up, output);

        var expected = g.Select((v, i) => v / (1 + Math.Exp(-(double)v)) * u[i]).ToArray();
        TestData.AssertClose(expected, TestData.Read(output), Relative);
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(true, true)]
    [InlineData(false, false)]
    [InlineData(false, true)]
    public void AddAndMulMatchReference(bool add, bool broadcast)
    {
        const int Rows = 5;
        const int Columns = 67;
        var a = TestData.Random(Rows * Columns, 16);
        var b = TestData.Random(broadcast ? Columns : Rows * Columns, 17);
        using var left = TestData.Upload(_backend, a, DType.F32, Rows, Columns);
        using var right = broadcast ? TestData.Upload(_backend, b, DType.F32, 1, Columns) : TestData.Upload(_backend, b, DType.F32, Rows, Columns);
        using var output = _backend.Allocate(DType.F32, Rows, Columns);

        if (add)
        {
            _backend.Add(left, right, output);
        }
        else
        {
            _backend.Mul(left, right, output);
        }

        var expected = a.Select((v, i) => add ? (double)v + b[broadcast ? i % Columns : i] : (double)v * b[broadcast ? i % Columns : i]).ToArray();
        var magnitude = a.Select((v, i) => Math.Abs((double)v) + Math.Abs(b[broadcast ? i % Columns : i])).ToArray();
        TestData.AssertClose(expected, magnitude, TestData.Read(output), 1e-7);
    }

    [Fact]
    public void AddRejectsIncompatibleShapes()
    {
        using var a = _backend.Allocate(DType.F32, 4, 6);
        using var b = _backend.Allocate(DType.F32, 2, 6);
        using var output = _backend.Allocate(DType.F32, 4, 6);
        var error = Assert.Throws<ArgumentException>(() => _backend.Add(a, b, output));
        Assert.Contains("F32[2, 6]", error.Message);
    }

    public void Dispose() => _backend.Dispose();

    /// <summary>Llama 3.1 frequency scaling, written from the published formula.</summary>
    private static float[] Llama3InverseFrequency(int headDim, double theta, double factor, double lowFrequencyFactor, double highFrequencyFactor, double originalContext)
    {
        var result = new float[headDim / 2];
        var lowWavelength = originalContext / lowFrequencyFactor;
        var highWavelength = originalContext / highFrequencyFactor;
        for (var j = 0; j < result.Length; j++)
        {
            var frequency = 1 / Math.Pow(theta, 2.0 * j / headDim);
            var wavelength = 2 * Math.PI / frequency;
            if (wavelength > lowWavelength)
            {
                frequency /= factor;
            }
            else if (wavelength >= highWavelength)
            {
                var smooth = ((originalContext / wavelength) - lowFrequencyFactor) / (highFrequencyFactor - lowFrequencyFactor);
                frequency = ((1 - smooth) * frequency / factor) + (smooth * frequency);
            }

            result[j] = (float)frequency;
        }

        return result;
    }
}
