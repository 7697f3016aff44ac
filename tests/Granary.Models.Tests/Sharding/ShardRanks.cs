using System.Net;
using System.Net.Sockets;
using Granary.Collectives;

namespace Granary.Models.Tests.Sharding;

/// <summary>
/// Runs the ranks of one world as threads of the test process, each with its own <see cref="Group"/> over loopback
/// (TCP or shared memory), and splits the world into pipeline and tensor groups the way `granary launch` ranks do.
/// </summary>
internal static class ShardRanks
{
    public static readonly TimeSpan RankLimit = TimeSpan.FromSeconds(90);

    /// <summary>One rank's view: its world group and, for a layout of stages × tensor ranks, its two subgroups.</summary>
    public sealed record RankGroups(Group World, Group? Pipeline, Group? Tensor);

    /// <summary>
    /// Runs <paramref name="body"/> on stages × tensorRanks ranks: world rank w is stage w / tensorRanks, tensor rank
    /// w % tensorRanks. Returns each rank's result or exception; fails the test when a rank does not finish in time.
    /// </summary>
    public static (T? Result, Exception? Error)[] Run<T>(
        int stages, int tensorRanks, Func<RankGroups, T> body, string backend = "shm", TimeSpan? timeout = null)
    {
        var size = stages * tensorRanks;
        var port = FreePort();
        var results = new (T? Result, Exception? Error)[size];
        var threads = Enumerable.Range(0, size).Select(rank => new Thread(() =>
        {
            try
            {
                using var world = Group.Init(Options(rank, size, port, backend, timeout ?? TimeSpan.FromSeconds(10)));
                using var pipeline = stages > 1 ? world.Split(color: rank % tensorRanks) : null;
                using var tensor = tensorRanks > 1 ? world.Split(color: rank / tensorRanks) : null;
                results[rank] = (body(new RankGroups(world, pipeline, tensor)), null);
            }
            catch (Exception e)
            {
                results[rank] = (default, e);
            }
        })
        { IsBackground = true, Name = $"rank {rank}" }).ToList();
        threads.ForEach(t => t.Start());
        foreach (var thread in threads)
        {
            Assert.True(thread.Join(RankLimit), $"{thread.Name} hung");
        }

        return results;
    }

    /// <summary>As <see cref="Run{T}"/>, failing the test with every rank's error when any rank throws.</summary>
    public static T[] RunAll<T>(int stages, int tensorRanks, Func<RankGroups, T> body, string backend = "shm")
    {
        var results = Run(stages, tensorRanks, body, backend);
        var failures = results.Select((r, rank) => (r.Error, rank)).Where(f => f.Error is not null).ToList();
        Assert.True(failures.Count == 0, string.Join("\n", failures.Select(f => $"rank {f.rank}: {f.Error}")));
        return results.Select(r => r.Result!).ToArray();
    }

    private static CollectiveOptions Options(int rank, int size, int port, string backend, TimeSpan timeout) => new()
    {
        Rank = rank,
        WorldSize = size,
        Coordinator = $"127.0.0.1:{port}",
        Backend = backend,
        Timeout = timeout,
        ConnectTimeout = TimeSpan.FromSeconds(20),
        SharedMemoryWindowBytes = 256 << 10,
    };

    private static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }
}
