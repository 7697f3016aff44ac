using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed class LinearTests : IDisposable
{
    // The f32 sum of 'in' products carries a rounding error of at most about in * 2^-24 of the sum of absolute terms;
    // 1e-5 of that magnitude covers in <= 160 with margin, and any real indexing or conversion bug is far larger.
    private const double Relative = 1e-5;

    private readonly CpuBackend _backend = new(threads: 2);

    public static TheoryData<DType, int, int, int, bool> DenseCases()
    {
        var data = new TheoryData<DType, int, int, int, bool>();
        foreach (var dtype in new[] { DType.F32, DType.F16, DType.BF16 })
        {
            foreach (var (inFeatures, outFeatures) in new[] { (67, 13), (160, 9), (16, 4) })
            {
                foreach (var tokens in new[] { 1, 5 })
                {
                    data.Add(dtype, inFeatures, outFeatures, tokens, tokens == 5);
                }
            }

            // Several row tiles, 4x4 register blocks plus leftover rows and tokens.
            data.Add(dtype, 160, 70, 9, true);
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(DenseCases))]
    public void DenseLinearMatchesReference(DType dtype, int inFeatures, int outFeatures, int tokens, bool withBias)
    {
        var w = TestData.RoundTo(TestData.Random(outFeatures * inFeatures, 1), dtype);
        var x = TestData.Random(tokens * inFeatures, 2);
        var b = TestData.Random(outFeatures, 3);
        using var weight = new DenseWeight(
            TestData.Upload(_backend, w, dtype, outFeatures, inFeatures),
            withBias ? TestData.Upload(_backend, b, DType.F32, outFeatures) : null);
        using var input = TestData.Upload(_backend, x, DType.F32, tokens, inFeatures);
        using var output = _backend.Allocate(DType.F32, tokens, outFeatures);

        _backend.Linear(input, weight, output);

        var (expected, magnitude) = Reference(w.Select(v => (double)v).ToArray(), x, withBias ? b : null, tokens, inFeatures, outFeatures);
        TestData.AssertClose(expected, magnitude, TestData.Read(output), Relative);
    }

    public static TheoryData<int, int, int, DType> QuantizedCases()
    {
        var data = new TheoryData<int, int, int, DType>();
        foreach (var bits in new[] { 4, 8 })
        {
            foreach (var groupSize in new[] { 32, 64, 128 })
            {
                foreach (var tokens in new[] { 1, 5 })
                {
                    data.Add(bits, groupSize, tokens, groupSize == 64 ? DType.F32 : groupSize == 32 ? DType.BF16 : DType.F16);
                }
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(QuantizedCases))]
    public void QuantizedLinearMatchesReference(int bits, int groupSize, int tokens, DType scaleDType)
    {
        const int OutFeatures = 13;
        var inFeatures = groupSize * 3;
        var (weight, dequantized) = TestData.Quantize(
            _backend, TestData.Random(OutFeatures * inFeatures, 4), OutFeatures, inFeatures, bits, groupSize, scaleDType);
        var x = TestData.Random(tokens * inFeatures, 5);
        using var _ = weight;
        using var input = TestData.Upload(_backend, x, DType.F32, tokens, inFeatures);
        using var output = _backend.Allocate(DType.F32, tokens, OutFeatures);

        _backend.Linear(input, weight, output);

        // Up to 384 terms, and the decode path sums scale * Σqx + bias * Σx, whose parts can exceed Σ|wx| by the code range.
        var (expected, magnitude) = Reference(dequantized, x, null, tokens, inFeatures, OutFeatures);
        TestData.AssertClose(expected, magnitude, TestData.Read(output), bits == 8 ? 2e-4 : 5e-5);
    }

    [Theory]
    [InlineData(4, 32)]
    [InlineData(4, 64)]
    [InlineData(4, 128)]
    [InlineData(8, 64)]
    public void QuantizedLinearGivesEachTokenWhatItGetsAlone(int bits, int groupSize)
    {
        // Batched steps and prefill must not change a sequence's logits: one token (the decode loop) and several (the
        // dequantized tile path) see the same inputs, so they differ by f32 rounding only (~1e-7 of Σ|w x| per term,
        // adding up like a random walk), far below what rounding x differently would give (up to 1/65024 of a span's
        // largest input per term; the large input below makes that ~1e-5 of Σ|w x|). 352 inputs leave a half chunk.
        const int OutFeatures = 21;
        const int Tokens = 6;
        var inFeatures = groupSize * (352 / groupSize);
        var (weight, dequantized) = TestData.Quantize(
            _backend, TestData.Random(OutFeatures * inFeatures, 8), OutFeatures, inFeatures, bits, groupSize, DType.BF16);
        var x = TestData.Random(Tokens * inFeatures, 9);
        for (var t = 0; t < Tokens; t++)
        {
            x[(t * inFeatures) + 3] = 40f;
        }

        using var _ = weight;
        using var input = TestData.Upload(_backend, x, DType.F32, Tokens, inFeatures);
        using var output = _backend.Allocate(DType.F32, Tokens, OutFeatures);
        _backend.Linear(input, weight, output);
        var batched = TestData.Read(output);
        var (_, magnitude) = Reference(dequantized, x, null, Tokens, inFeatures, OutFeatures);

        for (var t = 0; t < Tokens; t++)
        {
            using var one = TestData.Upload(_backend, x.AsSpan(t * inFeatures, inFeatures).ToArray(), DType.F32, 1, inFeatures);
            using var oneOutput = _backend.Allocate(DType.F32, 1, OutFeatures);
            _backend.Linear(one, weight, oneOutput);
            var alone = TestData.Read(oneOutput);
            for (var o = 0; o < OutFeatures; o++)
            {
                var size = magnitude[(t * OutFeatures) + o];
                var difference = Math.Abs(alone[o] - batched[(t * OutFeatures) + o]);
                Assert.True(difference <= 1e-6 * size, $"token {t}, row {o}: alone {alone[o]}, batched {batched[(t * OutFeatures) + o]}, Σ|wx| {size}");
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public void QuantizedLinearPassesANonFiniteInputOn(int tokens)
    {
        // Rounding x to fixed point must not turn a NaN or an infinity (a diverging model) into finite outputs.
        const int InFeatures = 128;
        var (weight, _) = TestData.Quantize(_backend, TestData.Random(4 * InFeatures, 10), 4, InFeatures, 4, 64, DType.BF16);
        var x = TestData.Random(tokens * InFeatures, 11);
        x[5] = float.NaN;
        x[((tokens - 1) * InFeatures) + 70] = float.PositiveInfinity;
        using var _ = weight;
        using var input = TestData.Upload(_backend, x, DType.F32, tokens, InFeatures);
        using var output = _backend.Allocate(DType.F32, tokens, 4);

        _backend.Linear(input, weight, output);
        var result = TestData.Read(output);

        Assert.All(result.Take(4), value => Assert.True(float.IsNaN(value), $"expected NaN, got {value}"));
        Assert.All(result.Skip((tokens - 1) * 4), value => Assert.False(float.IsFinite(value), $"expected a non-finite value, got {value}"));
    }

    [Fact]
    public void DecodeSpreadsManyRowsOverWorkers()
    {
        const int InFeatures = 96;
        const int OutFeatures = 1031;
        var w = TestData.RoundTo(TestData.Random(OutFeatures * InFeatures, 6), DType.BF16);
        var x = TestData.Random(InFeatures, 7);
        using var weight = new DenseWeight(TestData.Upload(_backend, w, DType.BF16, OutFeatures, InFeatures));
        using var input = TestData.Upload(_backend, x, DType.F32, 1, InFeatures);
        using var output = _backend.Allocate(DType.F32, 1, OutFeatures);

        _backend.Linear(input, weight, output);

        var (expected, magnitude) = Reference(w.Select(v => (double)v).ToArray(), x, null, 1, InFeatures, OutFeatures);
        TestData.AssertClose(expected, magnitude, TestData.Read(output), Relative);
    }

    [Theory]
    [InlineData(4, 32)]
    [InlineData(4, 128)]
    [InlineData(8, 64)]
    public void QuantizedDecodeSpreadsManyRowsOverWorkers(int bits, int groupSize)
    {
        // Several work items (the 4-bit loop takes rows 16 at a time in blocks interleaved at load), with a last block
        // pair only partly filled: 1031 = 64 x 16 + 7.
        const int OutFeatures = 1031;
        var inFeatures = groupSize * 3;
        var (weight, dequantized) = TestData.Quantize(
            _backend, TestData.Random(OutFeatures * inFeatures, 12), OutFeatures, inFeatures, bits, groupSize, DType.BF16);
        var x = TestData.Random(inFeatures, 13);
        using var _ = weight;
        using var input = TestData.Upload(_backend, x, DType.F32, 1, inFeatures);
        using var output = _backend.Allocate(DType.F32, 1, OutFeatures);

        _backend.Linear(input, weight, output);

        var (expected, magnitude) = Reference(dequantized, x, null, 1, inFeatures, OutFeatures);
        TestData.AssertClose(expected, magnitude, TestData.Read(output), bits == 8 ? 2e-4 : 5e-5);
    }

    [Theory]
    [InlineData("q4", 1)]
    [InlineData("bf16", 1)]
    [InlineData("mixed", 1)]
    [InlineData("q4", 3)]
    public void LinearsGiveWhatEachLinearGives(string formats, int tokens)
    {
        // One pass over several weights (one work item list, one input preparation) must give each output bit for bit
        // what its own Linear call gives; weights that prepare the input differently (mixed) run one after another.
        const int InFeatures = 192;
        int[] rows = [40, 24, 1031];
        var weights = rows.Select((outFeatures, i) =>
        {
            var values = TestData.Random(outFeatures * InFeatures, 20 + i);
            return formats == "bf16" || (formats == "mixed" && i == 1)
                ? (LinearWeight)new DenseWeight(TestData.Upload(_backend, TestData.RoundTo(values, DType.BF16), DType.BF16, outFeatures, InFeatures))
                : TestData.Quantize(_backend, values, outFeatures, InFeatures, 4, 64, DType.BF16).Weight;
        }).ToArray();
        using var input = TestData.Upload(_backend, TestData.Random(tokens * InFeatures, 30), DType.F32, tokens, InFeatures);
        var together = rows.Select(r => _backend.Allocate(DType.F32, tokens, r)).ToArray();
        var apart = rows.Select(r => _backend.Allocate(DType.F32, tokens, r)).ToArray();
        try
        {
            _backend.Linears(input, weights, together);
            for (var i = 0; i < weights.Length; i++)
            {
                _backend.Linear(input, weights[i], apart[i]);
                Assert.Equal(TestData.Read(apart[i]), TestData.Read(together[i]));
            }
        }
        finally
        {
            foreach (var tensor in together.Concat(apart))
            {
                tensor.Dispose();
            }

            foreach (var weight in weights)
            {
                weight.Dispose();
            }
        }
    }

    [Fact]
    public void LinearsNeedAnOutputPerWeight()
    {
        var (weight, _) = TestData.Quantize(_backend, TestData.Random(4 * 64, 40), 4, 64, 4, 64, DType.BF16);
        using var _ = weight;
        using var input = _backend.Allocate(DType.F32, 1, 64);
        using var output = _backend.Allocate(DType.F32, 1, 4);

        var error = Assert.Throws<ArgumentException>(() => _backend.Linears(input, [weight, weight], [output]));

        Assert.Contains("2 weights need as many outputs, got 1", error.Message);
    }

    [Fact]
    public unsafe void AddressesWeightsBeyondTwoGigabytes()
    {
        // A 2.15 GB bf16 table in a lazily committed allocation: only the rows written below, past the 2^31-byte mark,
        // are ever touched (a full GEMV over it would take too long on a shared test machine).
        const int InFeatures = 16384;
        const int OutFeatures = 65600;
        const int Written = 5;
        var bytes = (long)OutFeatures * InFeatures * 2;
        var memory = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            var w = TestData.RoundTo(TestData.Random(Written * InFeatures, 8), DType.BF16);
            var tailOffset = (long)(OutFeatures - Written) * InFeatures * 2;
            Granary.Tensors.Numerics.FloatConversion.SingleToBFloat16(w, new Span<ushort>(memory + tailOffset, Written * InFeatures));
            var x = TestData.Random(InFeatures, 9);
            using var table = _backend.Map(new HostRegion(memory, bytes, this), DType.BF16, OutFeatures, InFeatures);
            using var embeddingTable = new DenseWeight(table);
            using var ids = TestData.UploadInts(_backend, [OutFeatures - 1, OutFeatures - Written], 2);
            using var embedded = _backend.Allocate(DType.F32, 2, InFeatures);
            using var tailRows = new DenseWeight(new Tensor(table.Buffer, DType.BF16, [Written, InFeatures], tailOffset, ownsBuffer: false));
            using var input = TestData.Upload(_backend, x, DType.F32, 1, InFeatures);
            using var output = _backend.Allocate(DType.F32, 1, Written);

            _backend.Embedding(embeddingTable, ids, embedded);
            _backend.Linear(input, tailRows, output);

            Assert.Equal(w[^InFeatures..].Concat(w[..InFeatures]), TestData.Read(embedded));
            // 16384 terms summed in 32 interleaved f32 partial sums: the rounding error grows like sqrt(terms) * 2^-24
            // of the magnitude, well under 1e-4 of it.
            var (expected, magnitude) = Reference(w.Select(v => (double)v).ToArray(), x, null, 1, InFeatures, Written);
            TestData.AssertClose(expected, magnitude, TestData.Read(output), 1e-4);
        }
        finally
        {
            System.Runtime.InteropServices.NativeMemory.Free(memory);
        }
    }

    [Fact]
    public void RejectsMismatchedShapes()
    {
        using var weight = new DenseWeight(_backend.Allocate(DType.BF16, 4, 8));
        using var input = _backend.Allocate(DType.F32, 2, 7);
        using var output = _backend.Allocate(DType.F32, 2, 4);
        var error = Assert.Throws<ArgumentException>(() => _backend.Linear(input, weight, output));
        Assert.Contains("F32[2, 7]", error.Message);
    }

    public void Dispose() => _backend.Dispose();

    internal static (double[] Expected, double[] Magnitude) Reference(double[] w, float[] x, float[]? bias, int tokens, int inFeatures, int outFeatures)
    {
        var expected = new double[tokens * outFeatures];
        var magnitude = new double[tokens * outFeatures];
        for (var t = 0; t < tokens; t++)
        {
            for (var o = 0; o < outFeatures; o++)
            {
                double sum = bias?[o] ?? 0, size = Math.Abs(bias?[o] ?? 0);
                for (var i = 0; i < inFeatures; i++)
                {
                    var term = w[(o * inFeatures) + i] * x[(t * inFeatures) + i];
                    sum += term;
                    size += Math.Abs(term);
                }

                expected[(t * outFeatures) + o] = sum;
                magnitude[(t * outFeatures) + o] = size;
            }
        }

        return (expected, magnitude);
    }
}
