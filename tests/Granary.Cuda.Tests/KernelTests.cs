using System.Runtime.InteropServices;
using Granary.Tensors;

namespace Granary.Cuda.Tests;

/// <summary>Every CUDA kernel against the CPU backend on random data, at odd sizes.</summary>
[Collection("gpu")]
public sealed class KernelTests
{
    private const double F32 = 2e-6;

    [Fact]
    public void UploadDownloadCopyAndAllocateRoundTrip()
    {
        var gpu = Gpu.Backend;
        var values = Random32.Floats(1001, 1);
        using var source = gpu.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, 7, 143);
        using var destination = gpu.Allocate(DType.F32, 1001);
        Assert.All(Pair.Read(destination), v => Assert.Equal(0f, v));
        gpu.Copy(source, destination);
        Assert.Equal(values, Pair.Read(destination));
        Assert.Equal(values.AsSpan(143 * 2, 143).ToArray(), Pair.Read(source.Slice(2, 1)));
        Assert.Equal("cuda", gpu.Name);
        Assert.True(gpu.AvailableMemoryBytes > 0);
    }

    [Theory]
    [InlineData(1, 1024, DType.F32)]
    [InlineData(7, 1000, DType.BF16)]
    [InlineData(33, 128, DType.F16)]
    [InlineData(3, 4099, DType.BF16)]
    public void RmsNorm(int rows, int columns, DType weightType)
    {
        using var x = Pair.Floats(Random32.Floats(rows * columns, 2, 3f), DType.F32, rows, columns);
        using var w = Pair.Floats(Random32.Floats(columns, 3), weightType, columns);
        using var y = Pair.Output(rows, columns);
        Gpu.Cpu.RmsNorm(x.Cpu, w.Cpu, 1e-6f, y.Cpu);
        Gpu.Backend.RmsNorm(x.Gpu, w.Gpu, 1e-6f, y.Gpu);
        y.AssertMatches(F32, 1e-6);
    }

    [Theory]
    [InlineData(1, 32, 128, 1000)]
    [InlineData(5, 3, 64, 7)]
    [InlineData(17, 2, 16, 100000)]
    public void Rope(int tokens, int heads, int headDim, int firstPosition)
    {
        using var x = Pair.Floats(Random32.Floats(tokens * heads * headDim, 4), DType.F32, tokens, heads, headDim);
        using var positions = Pair.Ints(Enumerable.Range(firstPosition, tokens).ToArray(), tokens);
        var frequencies = Enumerable.Range(0, headDim / 2).Select(j => (float)Math.Pow(1e6, -2.0 * j / headDim)).ToArray();
        using var inverse = Pair.Floats(frequencies, DType.F32, headDim / 2);
        Gpu.Cpu.Rope(x.Cpu, positions.Cpu, inverse.Cpu, 1.25f);
        Gpu.Backend.Rope(x.Gpu, positions.Gpu, inverse.Gpu, 1.25f);
        x.AssertMatches(F32, 1e-6);
    }

    [Theory]
    [InlineData(9, 1001)]
    [InlineData(1, 151936)]
    [InlineData(64, 8)]
    public void Softmax(int rows, int columns)
    {
        using var x = Pair.Floats(Random32.Floats(rows * columns, 5, 20f), DType.F32, rows, columns);
        Gpu.Cpu.Softmax(x.Cpu);
        Gpu.Backend.Softmax(x.Gpu);

        // The normalising sum runs over up to 151936 terms in another order: a few ulp per thousand terms.
        x.AssertMatches(1e-5, 2e-5);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3 * 12289)]
    public void SiluMulAddMul(int count)
    {
        using var a = Pair.Floats(Random32.Floats(count, 6, 8f), DType.F32, count);
        using var b = Pair.Floats(Random32.Floats(count, 7, 8f), DType.F32, count);
        using var y = Pair.Output(count);
        Gpu.Cpu.SiluMul(a.Cpu, b.Cpu, y.Cpu);
        Gpu.Backend.SiluMul(a.Gpu, b.Gpu, y.Gpu);
        y.AssertMatches(F32, 1e-6);
        Gpu.Cpu.Add(a.Cpu, b.Cpu, y.Cpu);
        Gpu.Backend.Add(a.Gpu, b.Gpu, y.Gpu);
        y.AssertMatches(0);
        Gpu.Cpu.Mul(a.Cpu, b.Cpu, y.Cpu);
        Gpu.Backend.Mul(a.Gpu, b.Gpu, y.Gpu);
        y.AssertMatches(0);
    }

    [Fact]
    public void AddAndMulBroadcastOneRow()
    {
        using var a = Pair.Floats(Random32.Floats(5 * 77, 8), DType.F32, 5, 77);
        using var b = Pair.Floats(Random32.Floats(77, 9), DType.F32, 77);
        using var y = Pair.Output(5, 77);
        Gpu.Cpu.Add(a.Cpu, b.Cpu, y.Cpu);
        Gpu.Backend.Add(a.Gpu, b.Gpu, y.Gpu);
        y.AssertMatches(0);
        Gpu.Cpu.Mul(a.Cpu, b.Cpu, y.Cpu);
        Gpu.Backend.Mul(a.Gpu, b.Gpu, y.Gpu);
        y.AssertMatches(0);
    }

    [Theory]
    [InlineData(DType.F32)]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    public void DenseEmbedding(DType dtype)
    {
        const int Vocabulary = 301, Hidden = 96;
        using var table = Pair.Floats(Random32.Floats(Vocabulary * Hidden, 10), dtype, Vocabulary, Hidden);
        using var ids = Pair.Ints([0, 300, 17, 17, 5], 5);
        using var y = Pair.Output(5, Hidden);
        Gpu.Cpu.Embedding(new DenseWeight(table.Cpu), ids.Cpu, y.Cpu);
        Gpu.Backend.Embedding(new DenseWeight(table.Gpu), ids.Gpu, y.Gpu);
        y.AssertMatches(0);
    }

    [Theory]
    [InlineData(4, 32, DType.BF16)]
    [InlineData(8, 64, DType.F16)]
    [InlineData(4, 128, DType.F32)]
    public void QuantizedEmbedding(int bits, int groupSize, DType scaleType)
    {
        const int Vocabulary = 211, Hidden = 256;
        using var weights = QuantizedPair.Create(Vocabulary, Hidden, bits, groupSize, scaleType, 11);
        using var ids = Pair.Ints([210, 0, 99], 3);
        using var y = Pair.Output(3, Hidden);
        Gpu.Cpu.Embedding(weights.Cpu, ids.Cpu, y.Cpu);
        Gpu.Backend.Embedding(weights.Gpu, ids.Gpu, y.Gpu);
        y.AssertMatches(F32, 1e-6);
    }

    // Sizes cover the vectorised path (in a multiple of 8), the scalar path (in = 1000 + 1), GEMV tokens 1..8 and
    // the cuBLASLt GEMM (n > 8), with and without bias.
    [Theory]
    [InlineData(DType.BF16, 1, 4096, 1024, false)]
    [InlineData(DType.BF16, 3, 1000, 333, true)]
    [InlineData(DType.BF16, 8, 1024, 4097, false)]
    [InlineData(DType.BF16, 37, 1024, 999, true)]
    [InlineData(DType.BF16, 512, 2048, 1536, false)]
    [InlineData(DType.F16, 1, 1001, 257, false)]
    [InlineData(DType.F16, 5, 2048, 512, true)]
    [InlineData(DType.F16, 64, 512, 640, false)]
    [InlineData(DType.F32, 1, 1024, 300, true)]
    [InlineData(DType.F32, 6, 77, 13, false)]
    [InlineData(DType.F32, 100, 1024, 1000, true)]
    public void DenseLinear(DType dtype, int n, int inFeatures, int outFeatures, bool withBias)
    {
        using var x = Pair.Floats(Random32.Floats(n * inFeatures, 12), DType.F32, n, inFeatures);
        using var w = Pair.Floats(Random32.Floats(outFeatures * inFeatures, 13, 0.05f), dtype, outFeatures, inFeatures);
        using var bias = withBias ? Pair.Floats(Random32.Floats(outFeatures, 14), DType.BF16, outFeatures) : null;
        using var y = Pair.Output(n, outFeatures);
        Gpu.Cpu.Linear(x.Cpu, new DenseWeight(w.Cpu, bias?.Cpu), y.Cpu);
        Gpu.Backend.Linear(x.Gpu, new DenseWeight(w.Gpu, bias?.Gpu), y.Gpu);

        // f32 sums in another order: ~1e-6; the split bf16/f16 GEMM keeps ~16 bits of each activation: ~1e-5.
        y.AssertMatches(n > 8 && dtype != DType.F32 ? 3e-5 : 1e-5);
    }

    [Theory]
    [InlineData(4, 32, DType.BF16, 1)]
    [InlineData(4, 64, DType.F16, 2)]
    [InlineData(4, 128, DType.F32, 7)]
    [InlineData(8, 32, DType.F16, 1)]
    [InlineData(8, 64, DType.BF16, 4)]
    [InlineData(8, 128, DType.BF16, 21)]
    [InlineData(4, 64, DType.BF16, 12)]
    public void QuantizedLinear(int bits, int groupSize, DType scaleType, int n)
    {
        const int In = 1536, Out = 771;
        using var weights = QuantizedPair.Create(Out, In, bits, groupSize, scaleType, 15, withBias: n % 2 == 1);
        using var x = Pair.Floats(Random32.Floats(n * In, 16), DType.F32, n, In);
        using var y = Pair.Output(n, Out);
        Gpu.Cpu.Linear(x.Cpu, weights.Cpu, y.Cpu);
        Gpu.Backend.Linear(x.Gpu, weights.Gpu, y.Gpu);

        // The CPU backend multiplies 4-bit codes with x rounded to 16-bit fixed point per 32 inputs (up to 1/65024 of a
        // span's largest input off, README), the GPU with x itself: 1.2-2.0e-5 relative L2 apart here.
        y.AssertMatches(bits == 4 ? 5e-5 : 1e-5);
    }

    // Decode (one query, long cache: split over the sequence), prefill from 0, a chunk after a cached prefix; GQA and MHA.
    [Theory]
    [InlineData(1, 32, 8, 128, 4000)]
    [InlineData(1, 16, 8, 128, 0)]
    [InlineData(37, 8, 2, 64, 0)]
    [InlineData(16, 12, 4, 64, 100)]
    [InlineData(3, 4, 4, 16, 9)]
    [InlineData(2, 6, 2, 32, 700)]
    public void Attention(int n, int heads, int kvHeads, int headDim, int start)
    {
        var capacity = start + n + 5;
        using var q = Pair.Floats(Random32.Floats(n * heads * headDim, 17, 2f), DType.F32, n, heads, headDim);
        using var k = Pair.Floats(Random32.Floats(capacity * kvHeads * headDim, 18, 2f), DType.F32, capacity, kvHeads, headDim);
        using var v = Pair.Floats(Random32.Floats(capacity * kvHeads * headDim, 19), DType.F32, capacity, kvHeads, headDim);
        using var y = Pair.Output(n, heads, headDim);
        var scale = 1f / MathF.Sqrt(headDim);
        Gpu.Cpu.Attention(q.Cpu, k.Cpu, v.Cpu, start, scale, y.Cpu);
        Gpu.Backend.Attention(q.Gpu, k.Gpu, v.Gpu, start, scale, y.Gpu);
        y.AssertMatches(1e-5);
    }

    [Theory]
    [InlineData(13, 64, 8, true)]
    [InlineData(5, 8, 2, false)]
    [InlineData(1, 128, 8, true)]
    public void TopKRouting(int tokens, int experts, int k, bool normalize)
    {
        using var logits = Pair.Floats(Random32.Floats(tokens * experts, 20, 4f), DType.F32, tokens, experts);
        using var cpuIndices = Gpu.Cpu.Allocate(DType.I32, tokens, k);
        using var gpuIndices = Gpu.Backend.Allocate(DType.I32, tokens, k);
        using var weights = Pair.Output(tokens, k);
        Gpu.Cpu.TopKRouting(logits.Cpu, k, normalize, cpuIndices, weights.Cpu);
        Gpu.Backend.TopKRouting(logits.Gpu, k, normalize, gpuIndices, weights.Gpu);
        Assert.Equal(Pair.ReadInts(cpuIndices), Pair.ReadInts(gpuIndices));
        weights.AssertMatches(F32, 1e-6);
    }

    [Theory]
    [InlineData("bf16", 1)]
    [InlineData("bf16", 6)]
    [InlineData("f32", 3)]
    [InlineData("q4g32", 1)]
    [InlineData("q8g64", 5)]
    public void MixtureOfExperts(string layout, int tokens)
    {
        const int Experts = 8, K = 2, Hidden = 256, Inner = 128;
        var owned = new List<IDisposable>();
        var cpuExperts = new ExpertWeights?[Experts];
        var gpuExperts = new ExpertWeights?[Experts];
        for (var e = 0; e < Experts; e++)
        {
            // Expert 3 is held by another rank: it contributes nothing on either backend.
            if (e == 3)
            {
                continue;
            }

            var (gate, up, down) = (Make(Inner, Hidden, 100 + e), Make(Inner, Hidden, 200 + e), Make(Hidden, Inner, 300 + e));
            cpuExperts[e] = new ExpertWeights(gate.Cpu, up.Cpu, down.Cpu);
            gpuExperts[e] = new ExpertWeights(gate.Gpu, up.Gpu, down.Gpu);
        }

        try
        {
            using var x = Pair.Floats(Random32.Floats(tokens * Hidden, 21), DType.F32, tokens, Hidden);
            using var logits = Pair.Floats(Random32.Floats(tokens * Experts, 22, 3f), DType.F32, tokens, Experts);
            using var cpuIndices = Gpu.Cpu.Allocate(DType.I32, tokens, K);
            using var gpuIndices = Gpu.Backend.Allocate(DType.I32, tokens, K);
            using var weights = Pair.Output(tokens, K);
            using var y = Pair.Output(tokens, Hidden);
            Gpu.Cpu.TopKRouting(logits.Cpu, K, true, cpuIndices, weights.Cpu);
            Gpu.Backend.TopKRouting(logits.Gpu, K, true, gpuIndices, weights.Gpu);
            Gpu.Cpu.MixtureOfExperts(x.Cpu, cpuIndices, weights.Cpu, cpuExperts, y.Cpu);
            Gpu.Backend.MixtureOfExperts(x.Gpu, gpuIndices, weights.Gpu, gpuExperts, y.Gpu);

            // 4-bit experts: the CPU's fixed-point inputs (see QuantizedLinear) at both projections; 6.4e-5 apart.
            y.AssertMatches(layout.StartsWith("q4", StringComparison.Ordinal) ? 1e-4 : 2e-5);
        }
        finally
        {
            owned.ForEach(d => d.Dispose());
        }

        (LinearWeight Cpu, LinearWeight Gpu) Make(int outFeatures, int inFeatures, int seed)
        {
            if (layout.StartsWith('q'))
            {
                var (bits, group) = (layout[1] - '0', int.Parse(layout[3..], System.Globalization.CultureInfo.InvariantCulture));
                var quantized = QuantizedPair.Create(outFeatures, inFeatures, bits, group, DType.BF16, seed);
                owned.Add(quantized);
                return (quantized.Cpu, quantized.Gpu);
            }

            var dtype = layout == "f32" ? DType.F32 : DType.BF16;
            var pair = Pair.Floats(Random32.Floats(outFeatures * inFeatures, seed, 0.1f), dtype, outFeatures, inFeatures);
            owned.Add(pair);
            return (new DenseWeight(pair.Cpu), new DenseWeight(pair.Gpu));
        }
    }

    [Fact]
    public void FillUniformIsDeterministicAndInRange()
    {
        var gpu = Gpu.Backend;
        using var a = gpu.Allocate(DType.F32, 100_003);
        using var b = gpu.Allocate(DType.F32, 100_003);
        gpu.FillUniform(a, -0.5f, 0.25f, 42);
        gpu.FillUniform(b, -0.5f, 0.25f, 42);
        var values = Pair.Read(a);
        Assert.Equal(values, Pair.Read(b));
        Assert.All(values, v => Assert.InRange(v, -0.5f, 0.25f));
        Assert.InRange(values.Average(), -0.15, -0.10);
    }
}

/// <summary>Random MLX-quantized weights (codes, scales, biases) with the same bytes on both backends.</summary>
internal sealed class QuantizedPair : IDisposable
{
    private QuantizedPair(QuantizedWeight cpu, QuantizedWeight gpu)
    {
        Cpu = cpu;
        Gpu = gpu;
    }

    public QuantizedWeight Cpu { get; }

    public QuantizedWeight Gpu { get; }

    public static QuantizedPair Create(int outFeatures, int inFeatures, int bits, int groupSize, DType scaleType, int seed, bool withBias = false)
    {
        var words = outFeatures * inFeatures * bits / 32;
        var groups = inFeatures / groupSize;
        var codes = Random32.Words(words, seed);
        var scales = Pair.Encode(Random32.Floats(outFeatures * groups, seed + 1, 0.02f).Select(Math.Abs).ToArray(), scaleType);
        var biases = Pair.Encode(Random32.Floats(outFeatures * groups, seed + 2, 0.1f), scaleType);
        var bias = withBias ? Pair.Encode(Random32.Floats(outFeatures, seed + 3), DType.F32) : null;
        return new QuantizedPair(Make(Granary.Cuda.Tests.Gpu.Cpu), Make(Granary.Cuda.Tests.Gpu.Backend));

        QuantizedWeight Make(IComputeBackend backend) => new(
            backend.Upload(codes, DType.U32, outFeatures, inFeatures * bits / 32),
            backend.Upload(scales, scaleType, outFeatures, groups),
            backend.Upload(biases, scaleType, outFeatures, groups),
            bits,
            groupSize,
            bias is null ? null : backend.Upload(bias, DType.F32, outFeatures));
    }

    public void Dispose()
    {
        Cpu.Dispose();
        Gpu.Dispose();
    }
}
