using System.Runtime.InteropServices;
using Granary.Tensors.Cpu;

namespace Granary.Tensors.Tests;

public sealed unsafe class BackendTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 2);

    [Fact]
    public void CreateReturnsCpuAndExplainsMissingBackend()
    {
        using (var cpu = ComputeBackends.Create("cpu", threads: 1))
        {
            Assert.Equal("cpu", cpu.Name);
            Assert.Equal(DType.F32, cpu.ActivationDType);
            Assert.True(cpu.AvailableMemoryBytes > 0);
        }

        Assert.Contains("Apple", Assert.Throws<NotSupportedException>(() => ComputeBackends.Create("metal")).Message);
        Assert.Throws<ArgumentException>(() => ComputeBackends.Create("tpu"));
    }

    [Fact]
    public void AllocatedMemoryIsZeroedAndAligned()
    {
        using var tensor = _backend.Allocate(DType.F32, 3, 33);
        Assert.Equal(0, (long)CpuBackend.PointerOf(tensor) % 64);
        Assert.All(CpuBackend.AsSpan<float>(tensor).ToArray(), v => Assert.Equal(0f, v));
    }

    [Fact]
    public void MapUsesHostMemoryInPlace()
    {
        var memory = (float*)NativeMemory.Alloc(16 * sizeof(float));
        try
        {
            var owner = new object();
            using var tensor = _backend.Map(new HostRegion((byte*)memory, 16 * sizeof(float), owner), DType.F32, 4, 4);
            memory[5] = 42f;
            Assert.Equal(42f, CpuBackend.AsSpan<float>(tensor)[5]);
            Assert.True(CpuBackend.PointerOf(tensor) == memory);
            Assert.Throws<ArgumentException>(() => _backend.Map(new HostRegion((byte*)memory, 8, owner), DType.F32, 4, 4));
        }
        finally
        {
            NativeMemory.Free(memory);
        }
    }

    [Fact]
    public void UploadCopyDownloadRoundTrip()
    {
        var values = TestData.Random(12, 1);
        using var source = TestData.Upload(_backend, values, DType.F32, 2, 6);
        using var destination = _backend.Allocate(DType.F32, 2, 2, 6);
        _backend.Copy(source, destination.Slice(1, 1).Reshape(2, 6));
        var bytes = new byte[2 * 2 * 6 * 4];
        _backend.Download(destination, bytes);
        var copied = MemoryMarshal.Cast<byte, float>(bytes).ToArray();
        Assert.Equal(new float[12], copied[..12]);
        Assert.Equal(values, copied[12..]);
        Assert.Throws<ArgumentException>(() => _backend.Copy(source, destination));
        Assert.Throws<ArgumentException>(() => _backend.Download(source, new byte[8]));
    }

    [Fact]
    public void AsSpanChecksElementSize()
    {
        using var tensor = _backend.Allocate(DType.BF16, 8);
        Assert.Equal(8, CpuBackend.AsSpan<ushort>(tensor).Length);
        Assert.Throws<ArgumentException>(() => CpuBackend.AsSpan<float>(tensor));
    }

    [Theory]
    [InlineData(DType.BF16)]
    [InlineData(DType.F16)]
    [InlineData(DType.F32)]
    public void DenseEmbeddingGathersRows(DType dtype)
    {
        const int Vocabulary = 11;
        const int Hidden = 67;
        var table = TestData.RoundTo(TestData.Random(Vocabulary * Hidden, 2), dtype);
        int[] ids = [3, 0, 10, 3];
        using var weight = new DenseWeight(TestData.Upload(_backend, table, dtype, Vocabulary, Hidden));
        using var idTensor = TestData.UploadInts(_backend, ids, ids.Length);
        using var output = _backend.Allocate(DType.F32, ids.Length, Hidden);

        _backend.Embedding(weight, idTensor, output);

        var expected = ids.SelectMany(id => table.AsSpan(id * Hidden, Hidden).ToArray()).ToArray();
        Assert.Equal(expected, TestData.Read(output));
    }

    [Theory]
    [InlineData(4, 32)]
    [InlineData(8, 64)]
    public void QuantizedEmbeddingDequantizesRows(int bits, int groupSize)
    {
        const int Vocabulary = 9;
        var hidden = groupSize * 2;
        var (weight, dequantized) = TestData.Quantize(_backend, TestData.Random(Vocabulary * hidden, 3), Vocabulary, hidden, bits, groupSize, DType.F16);
        using var _ = weight;
        int[] ids = [8, 1];
        using var idTensor = TestData.UploadInts(_backend, ids, ids.Length);
        using var output = _backend.Allocate(DType.F32, ids.Length, hidden);

        _backend.Embedding(weight, idTensor, output);

        // scale * q + bias in f32 with one rounding (fused) against the exact double value.
        var expected = ids.SelectMany(id => dequantized.AsSpan(id * hidden, hidden).ToArray()).ToArray();
        TestData.AssertClose(expected, TestData.Read(output), 1e-6);
    }

    [Fact]
    public void EmbeddingRejectsOutOfRangeIds()
    {
        using var weight = new DenseWeight(_backend.Allocate(DType.BF16, 4, 8));
        using var ids = TestData.UploadInts(_backend, [4], 1);
        using var output = _backend.Allocate(DType.F32, 1, 8);
        Assert.Throws<ArgumentOutOfRangeException>(() => _backend.Embedding(weight, ids, output));
    }

    public void Dispose() => _backend.Dispose();
}
