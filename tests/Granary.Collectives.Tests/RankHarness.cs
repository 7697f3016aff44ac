using System.Net;
using System.Net.Sockets;

namespace Granary.Collectives.Tests;

/// <summary>Runs the ranks of one group as threads of this process, each with its own <see cref="Group"/>.</summary>
internal static class RankHarness
{
    public static int FreePort()
    {
        using var probe = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        probe.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        return ((IPEndPoint)probe.LocalEndPoint!).Port;
    }

    public static CollectiveOptions Options(int rank, int size, int port, string backend, TimeSpan? timeout = null) => new()
    {
        Rank = rank,
        WorldSize = size,
        Coordinator = $"127.0.0.1:{port}",
        Backend = backend,
        Timeout = timeout ?? TimeSpan.FromSeconds(10),
        ConnectTimeout = TimeSpan.FromSeconds(20),
        SharedMemoryWindowBytes = 64 << 10,
        RingSegmentBytes = 64 << 10,
        SmallMessageBytes = 4 << 10,
    };

    /// <summary>Runs <paramref name="body"/> on every rank; returns what each rank threw (null when it succeeded).</summary>
    public static Exception?[] Run(int size, string backend, Action<Group> body, TimeSpan? timeout = null, Func<int, CollectiveOptions, CollectiveOptions>? adjust = null)
    {
        var port = FreePort();
        var errors = new Exception?[size];
        var threads = Enumerable.Range(0, size).Select(rank => new Thread(() =>
        {
            try
            {
                var options = Options(rank, size, port, backend, timeout);
                using var group = Group.Init(adjust?.Invoke(rank, options) ?? options);
                body(group);
            }
            catch (Exception e)
            {
                errors[rank] = e;
            }
        })
        { IsBackground = true, Name = $"rank {rank}" }).ToList();
        threads.ForEach(t => t.Start());
        foreach (var thread in threads)
        {
            Assert.True(thread.Join(TimeSpan.FromSeconds(60)), "a rank hung");
        }

        return errors;
    }

    public static void RunAll(int size, string backend, Action<Group> body, Func<int, CollectiveOptions, CollectiveOptions>? adjust = null)
    {
        var errors = Run(size, backend, body, adjust: adjust);
        var failures = errors.Select((e, rank) => (e, rank)).Where(x => x.e is not null).ToList();
        Assert.True(failures.Count == 0, string.Join("\n", failures.Select(f => $"rank {f.rank}: {f.e}")));
    }

    /// <summary>Small integers: sums of a few ranks stay exact in f32, f16 and bf16, so results compare bit for bit.</summary>
    public static int Value(int rank, int index) => ((rank * 37) + (index * 11) + (index / 7)) % 41 - 20;
}
