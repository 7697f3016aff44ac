using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed class AttentionTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 2);

    [Theory]
    [InlineData(3, 8, 2, 20, 4, 10, 2)]
    [InlineData(1, 4, 4, 64, 37, 40, 2)]
    [InlineData(5, 6, 1, 16, 0, 5, 2)]
    [InlineData(2, 8, 2, 128, 700, 800, 2)]
    [InlineData(1, 16, 8, 128, 300, 320, 2)]
    [InlineData(1, 6, 2, 20, 100, 128, 2)]
    [InlineData(1, 16, 8, 128, 300, 320, 16)] // one row, fewer kv heads than threads: 2 position ranges per kv head
    [InlineData(1, 6, 2, 20, 300, 320, 16)] // 4 ranges of 75-76 positions
    [InlineData(1, 6, 2, 20, 100, 128, 16)] // too short to split
    public void CausalGroupedQueryAttentionMatchesReference(int n, int heads, int kvHeads, int headDim, int start, int capacity, int threads)
    {
        using var backend = new CpuBackend(threads);
        var q = TestData.Random(n * heads * headDim, 20);
        var k = TestData.Random(capacity * kvHeads * headDim, 21, 2f);
        var v = TestData.Random(capacity * kvHeads * headDim, 22);
        var scale = 1 / MathF.Sqrt(headDim);
        using var query = TestData.Upload(backend, q, DType.F32, n, heads, headDim);
        using var keys = TestData.Upload(backend, k, DType.F32, capacity, kvHeads, headDim);
        using var values = TestData.Upload(backend, v, DType.F32, capacity, kvHeads, headDim);
        using var output = backend.Allocate(DType.F32, n, heads, headDim);

        backend.Attention(query, keys, values, start, scale, output);

        var expected = new double[n * heads * headDim];
        var magnitude = new double[expected.Length];
        for (var i = 0; i < n; i++)
        {
            var length = start + i + 1;
            for (var h = 0; h < heads; h++)
            {
                var kvHead = h / (heads / kvHeads);
                var scores = new double[length];
                for (var j = 0; j < length; j++)
                {
                    var dot = 0.0;
                    for (var c = 0; c < headDim; c++)
                    {
                        dot += (double)q[(((i * heads) + h) * headDim) + c] * k[(((j * kvHeads) + kvHead) * headDim) + c];
                    }

                    scores[j] = dot * scale;
                }

                var max = scores.Max();
                var sum = scores.Sum(s => Math.Exp(s - max));
                for (var c = 0; c < headDim; c++)
                {
                    double value = 0, size = 0;
                    for (var j = 0; j < length; j++)
                    {
                        var p = Math.Exp(scores[j] - max) / sum;
                        value += p * v[(((j * kvHeads) + kvHead) * headDim) + c];
                        size += p * Math.Abs(v[(((j * kvHeads) + kvHead) * headDim) + c]);
                    }

                    expected[(((i * heads) + h) * headDim) + c] = value;
                    magnitude[(((i * heads) + h) * headDim) + c] = size;
                }
            }
        }

        // Scores with |s| up to ~20 carry f32 errors of ~1e-6 absolute, which become relative errors in exp(s - max);
        // 2e-5 of the weighted magnitude bounds that plus the f32 sums over up to 800 positions.
        TestData.AssertClose(expected, magnitude, TestData.Read(output), 2e-5);
    }

    [Fact]
    public void RejectsPositionsBeyondCapacity()
    {
        using var query = _backend.Allocate(DType.F32, 2, 4, 8);
        using var keys = _backend.Allocate(DType.F32, 5, 2, 8);
        using var values = _backend.Allocate(DType.F32, 5, 2, 8);
        using var output = _backend.Allocate(DType.F32, 2, 4, 8);
        Assert.Throws<ArgumentOutOfRangeException>(() => _backend.Attention(query, keys, values, 4, 1f, output));
    }

    public void Dispose() => _backend.Dispose();
}
