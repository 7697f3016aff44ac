using System.Runtime.InteropServices;
using Granary.Tensors;
using Granary.Tensors.Cuda.Nccl;

namespace Granary.Cuda.Tests;

[Collection("gpu")]
public sealed class GraphTests
{
    /// <summary>A captured chain replays the eager result, and reads its inputs anew at each replay.</summary>
    [Fact]
    public void CapturedStepReplaysEagerResults()
    {
        const int Hidden = 1024, Inner = 2816;
        var gpu = Gpu.Backend;
        using var x = gpu.Allocate(DType.F32, 1, Hidden);
        using var norm = gpu.Allocate(DType.BF16, Hidden);
        using var gateWeight = gpu.Allocate(DType.BF16, Inner, Hidden);
        using var upWeight = gpu.Allocate(DType.BF16, Inner, Hidden);
        using var normed = gpu.Allocate(DType.F32, 1, Hidden);
        using var gate = gpu.Allocate(DType.F32, 1, Inner);
        using var up = gpu.Allocate(DType.F32, 1, Inner);
        using var y = gpu.Allocate(DType.F32, 1, Inner);
        gpu.FillUniform(norm, 0.5f, 1.5f, 1);
        gpu.FillUniform(gateWeight, -0.05f, 0.05f, 2);
        gpu.FillUniform(upWeight, -0.05f, 0.05f, 3);
        var (gateLinear, upLinear) = (new DenseWeight(gateWeight), new DenseWeight(upWeight));

        void Step()
        {
            gpu.RmsNorm(x, norm, 1e-6f, normed);
            gpu.Linear(normed, gateLinear, gate);
            gpu.Linear(normed, upLinear, up);
            gpu.SiluMul(gate, up, y);
        }

        float[] Eager(ulong seed)
        {
            gpu.FillUniform(x, -2f, 2f, seed);
            Step();
            return Pair.Read(y);
        }

        var first = Eager(10);
        var second = Eager(11);
        Assert.NotEqual(first, second);
        using var graph = gpu.Capture(Step);
        foreach (var (seed, expected) in new[] { (10UL, first), (11UL, second) })
        {
            gpu.FillUniform(x, -2f, 2f, seed);
            gpu.FillUniform(y, float.NaN, float.NaN, 0);
            graph.Launch();
            Assert.Equal(expected, Pair.Read(y));
        }
    }
}

/// <summary>
/// NCCL: a 1-rank communicator runs every collective on device buffers, two communicators live side by side in one
/// process, and where the machine has several GPUs one process drives a communicator per GPU (NCCL refuses two ranks
/// on one device).
/// </summary>
[Collection("gpu")]
public sealed class NcclTests
{
    [Fact]
    public void OneRankCollectivesOnDeviceBuffers()
    {
        var gpu = Gpu.Backend;
        using var communicator = new NcclCommunicator(gpu, NcclCommunicator.CreateUniqueId(), 0, 1);
        Assert.Equal("0", Environment.GetEnvironmentVariable("NCCL_NVLS_ENABLE"));
        var values = Random32.Floats(4099, 30);
        using var buffer = Upload(values);
        communicator.AllReduce(buffer, NcclReduction.Sum);
        Assert.Equal(values, Pair.Read(buffer));
        communicator.AllReduce(buffer, NcclReduction.Max);
        communicator.Broadcast(buffer, 0);
        Assert.Equal(values, Pair.Read(buffer));

        using var gathered = gpu.Allocate(DType.F32, 4099);
        communicator.AllGather(buffer, gathered);
        Assert.Equal(values, Pair.Read(gathered));
        using var scattered = gpu.Allocate(DType.F32, 4099);
        communicator.ReduceScatter(gathered, scattered, NcclReduction.Sum);
        Assert.Equal(values, Pair.Read(scattered));

        var halves = values.Select(v => (Half)v).ToArray();
        using var half = gpu.Upload(MemoryMarshal.AsBytes(halves.AsSpan()), DType.F16, halves.Length);
        communicator.AllReduce(half, NcclReduction.Average);
        var back = new Half[halves.Length];
        gpu.Download(half, MemoryMarshal.AsBytes(back.AsSpan()));
        Assert.Equal(halves, back);
    }

    [Fact]
    public void TwoCommunicatorsInOneProcess()
    {
        var gpu = Gpu.Backend;
        var id = NcclCommunicator.CreateUniqueId();
        Assert.Equal(id.ToBytes(), NcclUniqueId.FromBytes(id.ToBytes()).ToBytes());
        using var first = new NcclCommunicator(gpu, id, 0, 1);
        using var second = new NcclCommunicator(gpu, NcclCommunicator.CreateUniqueId(), 0, 1);
        var a = Random32.Floats(1000, 31);
        var b = Random32.Floats(1000, 32);
        using var bufferA = Upload(a);
        using var bufferB = Upload(b);
        first.AllReduce(bufferA);
        second.AllReduce(bufferB);
        first.AllReduce(bufferA);
        Assert.Equal(a, Pair.Read(bufferA));
        Assert.Equal(b, Pair.Read(bufferB));
    }

    /// <summary>ncclCommInitAll: one process drives a communicator per GPU, its collectives bracketed by a group call.</summary>
    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void CommunicatorsOfSeveralGpusInOneProcess(int gpus)
    {
        Gpu.RequireDevices(gpus);
        var contributions = Enumerable.Range(0, gpus).Select(r => Random32.Floats(2048, 50 + r)).ToArray();
        var sum = Enumerable.Range(0, 2048).Select(i => contributions.Sum(c => c[i])).ToArray();
        var communicators = NcclCommunicator.CreateAll(Enumerable.Range(0, gpus).ToArray());
        var tensors = Enumerable.Range(0, gpus).Select(r => Gpu.On(r).Upload(MemoryMarshal.AsBytes(contributions[r].AsSpan()), DType.F32, 2048)).ToArray();
        try
        {
            Assert.Equal(Enumerable.Range(0, gpus), communicators.Select(c => c.Rank));
            NcclCommunicator.GroupStart();
            for (var rank = 0; rank < gpus; rank++)
            {
                communicators[rank].AllReduce(tensors[rank]);
            }

            NcclCommunicator.GroupEnd();
            foreach (var tensor in tensors)
            {
                Pair.AssertClose(sum, Pair.Read(tensor), 1e-6);
            }
        }
        finally
        {
            foreach (var tensor in tensors)
            {
                tensor.Dispose();
            }

            foreach (var communicator in communicators)
            {
                communicator.Dispose();
            }
        }
    }

    private static Tensor Upload(float[] values) => Gpu.Backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, values.Length);
}
