using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text.Json;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.Sharding;
using Granary.Tensors;
using Granary.Tensors.Cuda;

namespace Granary.Cuda.Tests;

/// <summary>
/// The "nccl" collective backend through <see cref="Group"/>: a group of one on one GPU, and groups of 2 and 4 ranks
/// (one thread per GPU in this process, each with its own TCP bootstrap and backend) where the machine has the GPUs.
/// Tensors of the CUDA backend are reduced in device memory: the host path would throw for them.
/// </summary>
[Collection("gpu")]
public sealed class NcclTransportTests
{
    private static readonly TimeSpan RankLimit = TimeSpan.FromMinutes(3);

    [Fact]
    public void GroupOfOneRunsEveryCollectiveOnDeviceAndHostBuffers()
    {
        var gpu = Gpu.Backend;
        using var group = Group.Init(Options(0, 1, FreePort()));
        Assert.Equal("nccl", group.Backend);
        Assert.IsAssignableFrom<IDeviceCollectiveTransport>(group.Transport);
        Assert.True(((IDeviceCollectiveTransport)group.Transport).Supports(gpu));
        Assert.False(((IDeviceCollectiveTransport)group.Transport).Supports(Gpu.Cpu));

        var values = Random32.Floats(3001, 40);
        using var tensor = Upload(gpu, values);
        group.AllSum(tensor);
        group.AllMax(tensor);
        Assert.Equal(values, Pair.Read(tensor));
        using var gathered = gpu.Allocate(DType.F32, values.Length);
        group.AllGather(tensor, gathered);
        Assert.Equal(values, Pair.Read(gathered));

        var host = (float[])values.Clone();
        group.AllSum<float>(host);
        Assert.Equal(values, host);
        using var cpuTensor = Gpu.Cpu.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, values.Length);
        group.AllSum(cpuTensor);
        Assert.Equal(values, Pair.Read(cpuTensor));
        group.Barrier();
        using var split = group.Split(color: 0);
        Assert.Equal(("nccl", 1), (split.Backend, split.Size));
        split.AllSum(tensor);
        Assert.Equal(values, Pair.Read(tensor));
    }

    [Theory]
    [InlineData(2)]
    [InlineData(4)]
    public void RanksOnSeveralGpusCombineDeviceAndHostBuffers(int ranks)
    {
        Gpu.RequireDevices(ranks);
        const int Count = 5000;
        float[] Contribution(int rank) => Random32.Floats(Count, 100 + rank);
        var contributions = Enumerable.Range(0, ranks).Select(Contribution).ToArray();
        var sum = Enumerable.Range(0, Count).Select(i => contributions.Sum(c => c[i])).ToArray();
        var max = Enumerable.Range(0, Count).Select(i => contributions.Max(c => c[i])).ToArray();

        RunRanks(ranks, (rank, group, gpu) =>
        {
            Assert.Equal("nccl", group.Backend);
            using var tensor = Upload(gpu, contributions[rank]);
            group.AllSum(tensor);
            Pair.AssertClose(sum, Pair.Read(tensor), 1e-6);
            using var largest = Upload(gpu, contributions[rank]);
            group.AllMax(largest);
            Assert.Equal(max, Pair.Read(largest));

            using var own = Upload(gpu, contributions[rank]);
            using var all = gpu.Allocate(DType.F32, ranks * Count);
            group.AllGather(own, all);
            Assert.Equal(contributions.SelectMany(c => c).ToArray(), Pair.Read(all));

            using var broadcast = Upload(gpu, contributions[rank]);
            group.Broadcast(broadcast, root: ranks - 1);
            Assert.Equal(contributions[ranks - 1], Pair.Read(broadcast));

            // A ring of device sends: even ranks send first, odd ranks receive first.
            using var outgoing = Upload(gpu, contributions[rank]);
            using var incoming = gpu.Allocate(DType.F32, Count);
            var (next, previous) = ((rank + 1) % ranks, (rank + ranks - 1) % ranks);
            if (rank % 2 == 0)
            {
                group.Send(outgoing, next);
                group.Recv(incoming, previous);
            }
            else
            {
                group.Recv(incoming, previous);
                group.Send(outgoing, next);
            }

            Assert.Equal(contributions[previous], Pair.Read(incoming));

            int[] ints = [rank + 1, 10 * rank];
            group.AllSum<int>(ints);
            Assert.Equal([ranks * (ranks + 1) / 2, 10 * ranks * (ranks - 1) / 2], ints);
            var hostAll = new float[ranks * Count];
            group.AllGather<float>(contributions[rank], hostAll);
            Assert.Equal(contributions.SelectMany(c => c).ToArray(), hostAll);
            var block = new float[Count / ranks * ranks];
            var scattered = new float[Count / ranks];
            contributions[rank].AsSpan(0, block.Length).CopyTo(block);
            group.ReduceScatter<float>(block, scattered);
            Pair.AssertClose(sum.AsSpan(rank * scattered.Length, scattered.Length).ToArray(), scattered, 1e-6);

            using var half = group.Split(color: rank % 2);
            Assert.Equal((rank / 2, (ranks + 1 - (rank % 2)) / 2), (half.Rank, half.Size));
            Span<int> one = [1];
            half.AllSum(one);
            Assert.Equal(half.Size, one[0]);
            group.Barrier();
        });
    }

    public static TheoryData<string, int> ShardedModels() => new()
    {
        { "qwen3", 2 }, { "qwen3", 4 }, { "qwen3_bf16", 2 }, { "qwen3_bf16", 4 }, { "llama", 4 }, { "qwen2", 2 },
        { "qwen3_moe", 2 }, { "qwen3_moe", 4 }, { "qwen3_q4_g64", 2 },
    };

    /// <summary>
    /// Tensor parallel on the GPUs: every rank gets transformers' prompt logits (to the tolerance of one GPU) and the
    /// same greedy tokens, with the shards summed by NCCL in device memory.
    /// </summary>
    [Theory]
    [MemberData(nameof(ShardedModels))]
    public void TensorParallelModelMatchesTransformers(string name, int ranks)
    {
        Gpu.RequireDevices(ranks);
        var directory = Path.Combine(ModelTests.ReferenceRoot(), name);
        using var document = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(directory, "reference.json")));
        var root = document.RootElement;
        var prompt = root.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var expectedLogits = root.GetProperty("logits").EnumerateArray().Select(r => r.EnumerateArray().Select(e => e.GetSingle()).ToArray()).ToArray();
        var expectedTokens = root.GetProperty("greedy_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        RunRanks(ranks, (rank, group, gpu) =>
        {
            using var loaded = ShardedModelLoader.ShardedLoad(directory, gpu, pipelineGroup: null, tensorGroup: group);
            var model = loaded.Model;
            Assert.Equal((rank, ranks), (model.Shard.TensorRank, model.Shard.TensorSize));
            using var cache = model.CreateCache(64);
            var logits = model.ForwardAllPositions(prompt, cache);
            var vocabulary = model.Config.VocabularySize;
            for (var position = 0; position < prompt.Length; position++)
            {
                var worst = 0.0;
                for (var i = 0; i < vocabulary; i++)
                {
                    worst = Math.Max(worst, Math.Abs(logits[(position * vocabulary) + i] - expectedLogits[position][i]));
                }

                Assert.True(worst < 1e-3, $"{name} on {ranks} GPUs, rank {rank}, position {position}: max |logit error| {worst:E3}.");
            }

            using var decodeCache = model.CreateCache(64);
            var last = new float[vocabulary];
            model.Forward(prompt, decodeCache, last);
            var tokens = new List<int>();
            for (var step = 0; step < expectedTokens.Length; step++)
            {
                var next = Array.IndexOf(last, last.Max());
                tokens.Add(next);
                model.Forward([next], decodeCache, last);
            }

            Assert.Equal(expectedTokens, tokens);
        });
    }

    /// <summary>Runs <paramref name="body"/> as ranks 0..n-1 of one nccl group, rank r on GPU r, one thread each.</summary>
    internal static void RunRanks(int ranks, Action<int, Group, CudaBackend> body)
    {
        // Each backend compiles its kernels on creation: make them side by side.
        var backends = new CudaBackend[ranks];
        Parallel.For(0, ranks, rank => backends[rank] = Gpu.On(rank));
        var port = FreePort();
        var errors = new Exception?[ranks];
        var threads = Enumerable.Range(0, ranks).Select(rank => new Thread(() =>
        {
            try
            {
                using var group = Group.Init(Options(rank, ranks, port));
                body(rank, group, backends[rank]);
                backends[rank].Synchronize();
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => Assert.True(t.Join(RankLimit), $"a rank of {ranks} did not finish within {RankLimit}"));
        for (var rank = 0; rank < ranks; rank++)
        {
            if (errors[rank] is { } error)
            {
                throw new InvalidOperationException($"Rank {rank} of {ranks} failed: {error.Message}", error);
            }
        }
    }

    private static CollectiveOptions Options(int rank, int size, int port) => new()
    {
        Rank = rank,
        WorldSize = size,
        Coordinator = $"127.0.0.1:{port}",
        Backend = "nccl",
        Timeout = TimeSpan.FromSeconds(60),
        ConnectTimeout = TimeSpan.FromSeconds(60),
    };

    private static Tensor Upload(CudaBackend gpu, float[] values) => gpu.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, values.Length);

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}

/// <summary>Where there is no GPU (CI), choosing the nccl backend fails at once with the reason.</summary>
public sealed class NcclWithoutGpuTests
{
    [Fact]
    public void NcclBackendWithoutGpuFailsWithTheReason()
    {
        if (CudaBackend.IsAvailable(out _))
        {
            Assert.Skip("A GPU is present; NcclTransportTests cover the nccl backend here.");
        }

        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var port = ((IPEndPoint)probe.LocalEndPoint!).Port;
        probe.Dispose();
        var error = Assert.Throws<CollectiveException>(() => Group.Init(new CollectiveOptions { Coordinator = $"127.0.0.1:{port}", Backend = "nccl" }));
        Assert.Contains("needs a CUDA GPU and NCCL", error.Message);
        Assert.Equal("Init", error.Operation);
    }
}
