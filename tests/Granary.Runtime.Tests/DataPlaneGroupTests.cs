using System.Diagnostics;
using Granary.Collectives;

namespace Granary.Runtime.Tests;

/// <summary>Groups formed from a peer table exchanged by a control plane (as shard grains do through the coordinator).</summary>
public sealed class DataPlaneGroupTests
{
    private static CollectiveOptions Options(int rank, int size) => new()
    {
        Rank = rank,
        WorldSize = size,
        Backend = "tcp",
        Timeout = TimeSpan.FromSeconds(10),
        ConnectTimeout = TimeSpan.FromSeconds(2),
    };

    [Fact]
    public async Task Three_ranks_form_a_group_from_their_listeners_endpoints_and_sum()
    {
        var listeners = Enumerable.Range(0, 3).Select(_ => DataPlaneListener.Bind("127.0.0.1")).ToList();
        var peers = listeners.Select(listener => listener.Endpoint).ToArray();
        var groupId = Guid.NewGuid();
        var sums = await Task.WhenAll(Enumerable.Range(0, 3).Select(rank => Task.Run(() =>
        {
            using var group = Group.Init(Options(rank, 3), listeners[rank], peers, groupId);
            float[] values = [rank + 1, 10 * (rank + 1), -rank];
            group.AllSum<float>(values);
            return values;
        })).ToArray()).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.All(sums, sum => Assert.Equal([6f, 60f, -3f], sum));
    }

    [Fact]
    public void A_peer_whose_listener_is_gone_fails_the_formation_at_once_and_a_missing_one_within_the_timeout()
    {
        using var first = DataPlaneListener.Bind("127.0.0.1");
        using var second = DataPlaneListener.Bind("127.0.0.1");
        DataPlanePeer[] peers = [first.Endpoint, second.Endpoint];
        first.Dispose();

        // Rank 1 connects to rank 0, whose process (listener) is gone: refused, not a wait.
        var clock = Stopwatch.StartNew();
        var refused = Assert.Throws<CollectiveException>(() => Group.Init(Options(1, 2), second, peers, Guid.NewGuid()));
        Assert.Contains("cannot connect to rank 0", refused.Message, StringComparison.Ordinal);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(2), $"took {clock.Elapsed}");

        // Rank 0 waits for rank 1, which never comes: a clear error at the connect timeout.
        using var lonely = DataPlaneListener.Bind("127.0.0.1");
        using var absent = DataPlaneListener.Bind("127.0.0.1");
        var missing = Assert.Throws<CollectiveException>(() => Group.Init(Options(0, 2), lonely, [lonely.Endpoint, absent.Endpoint], Guid.NewGuid()));
        Assert.Contains("did not form within 2 s", missing.Message, StringComparison.Ordinal);

        using var stray = DataPlaneListener.Bind("127.0.0.1");
        Assert.Throws<ArgumentException>(() => Group.Init(Options(0, 2), stray, [absent.Endpoint, stray.Endpoint], Guid.NewGuid()));
    }
}
