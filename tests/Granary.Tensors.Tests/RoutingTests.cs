using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed class RoutingTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 2);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TopKRoutingPicksLowerIndexOnTies(bool normalize)
    {
        // Row 0: experts 1, 3 and 4 tie for first place; row 1: all equal; row 2: distinct values.
        float[] logits =
        [
            0.5f, 2f, -1f, 2f, 2f, 0f,
            1f, 1f, 1f, 1f, 1f, 1f,
            0.1f, -3f, 4f, 0.3f, 2.5f, 0.2f,
        ];
        const int Experts = 6;
        const int K = 2;
        using var input = TestData.Upload(_backend, logits, DType.F32, 3, Experts);
        using var indices = _backend.Allocate(DType.I32, 3, K);
        using var weights = _backend.Allocate(DType.F32, 3, K);

        _backend.TopKRouting(input, K, normalize, indices, weights);

        Assert.Equal([1, 3, 0, 1, 2, 4], CpuBackend.AsSpan<int>(indices).ToArray());
        var expected = new double[3 * K];
        var chosen = new[] { 1, 3, 0, 1, 2, 4 };
        for (var t = 0; t < 3; t++)
        {
            var row = logits.AsSpan(t * Experts, Experts).ToArray();
            var max = row.Max();
            var sum = row.Sum(v => Math.Exp(v - max));
            var picked = Enumerable.Range(0, K).Select(s => Math.Exp(row[chosen[(t * K) + s]] - max) / sum).ToArray();
            var total = picked.Sum();
            for (var s = 0; s < K; s++)
            {
                expected[(t * K) + s] = normalize ? picked[s] / total : picked[s];
            }
        }

        TestData.AssertClose(expected, TestData.Read(weights), 1e-6);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(5)]
    public void MixtureOfExpertsSkipsMissingExpertsAndMatchesReference(int tokens)
    {
        const int Hidden = 64;
        const int Intermediate = 40;
        const int K = 2;
        var expertCount = 4;
        var experts = new ExpertWeights?[expertCount];
        var reference = new (double[] Gate, double[] Up, double[] Down)?[expertCount];
        for (var e = 0; e < expertCount; e++)
        {
            if (e == 2)
            {
                continue; // Held by another rank.
            }

            var dtype = e == 1 ? DType.F32 : DType.BF16;
            var gate = TestData.RoundTo(TestData.Random(Intermediate * Hidden, 30 + e), dtype);
            var down = TestData.RoundTo(TestData.Random(Hidden * Intermediate, 50 + e), dtype);
            LinearWeight up;
            double[] upValues;
            if (e == 3)
            {
                (var quantized, upValues) = TestData.Quantize(_backend, TestData.Random(Intermediate * Hidden, 40 + e), Intermediate, Hidden, 4, 32, DType.BF16);
                up = quantized;
            }
            else
            {
                var values = TestData.RoundTo(TestData.Random(Intermediate * Hidden, 40 + e), dtype);
                up = new DenseWeight(TestData.Upload(_backend, values, dtype, Intermediate, Hidden));
                upValues = values.Select(v => (double)v).ToArray();
            }

            experts[e] = new ExpertWeights(
                new DenseWeight(TestData.Upload(_backend, gate, dtype, Intermediate, Hidden)),
                up,
                new DenseWeight(TestData.Upload(_backend, down, dtype, Hidden, Intermediate)));
            reference[e] = (gate.Select(v => (double)v).ToArray(), upValues, down.Select(v => (double)v).ToArray());
        }

        var routes = new[] { 0, 2, 3, 1, 2, 0, 1, 3, 3, 0 }.Take(tokens * K).ToArray();
        var routeWeights = TestData.Random(tokens * K, 60).Select(Math.Abs).ToArray();
        var x = TestData.Random(tokens * Hidden, 61);
        using var input = TestData.Upload(_backend, x, DType.F32, tokens, Hidden);
        using var indices = TestData.UploadInts(_backend, routes, tokens, K);
        using var weights = TestData.Upload(_backend, routeWeights, DType.F32, tokens, K);
        using var output = _backend.Allocate(DType.F32, tokens, Hidden);

        _backend.MixtureOfExperts(input, indices, weights, experts, output);

        var expected = new double[tokens * Hidden];
        var magnitude = new double[tokens * Hidden];
        for (var t = 0; t < tokens; t++)
        {
            for (var s = 0; s < K; s++)
            {
                if (reference[routes[(t * K) + s]] is not { } expert)
                {
                    continue;
                }

                var activation = new double[Intermediate];
                for (var j = 0; j < Intermediate; j++)
                {
                    double g = 0, u = 0;
                    for (var i = 0; i < Hidden; i++)
                    {
                        g += expert.Gate[(j * Hidden) + i] * x[(t * Hidden) + i];
                        u += expert.Up[(j * Hidden) + i] * x[(t * Hidden) + i];
                    }

                    activation[j] = g / (1 + Math.Exp(-g)) * u;
                }

                for (var o = 0; o < Hidden; o++)
                {
                    double y = 0, size = 0;
                    for (var j = 0; j < Intermediate; j++)
                    {
                        y += expert.Down[(o * Intermediate) + j] * activation[j];
                        size += Math.Abs(expert.Down[(o * Intermediate) + j] * activation[j]);
                    }

                    expected[(t * Hidden) + o] += routeWeights[(t * K) + s] * y;
                    magnitude[(t * Hidden) + o] += routeWeights[(t * K) + s] * size;
                }
            }
        }

        // Three chained f32 layers of <= 64 terms: errors compound to a few 1e-6 of the magnitude.
        TestData.AssertClose(expected, magnitude, TestData.Read(output), 3e-5);
        foreach (var expert in experts)
        {
            expert?.Gate.Dispose();
            expert?.Up.Dispose();
            expert?.Down.Dispose();
        }
    }

    public void Dispose() => _backend.Dispose();
}
