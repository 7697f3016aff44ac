using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace Granary.Collectives.Tests;

public class FaultTests
{
    [Theory]
    [InlineData("ring")]
    [InlineData("mesh")]
    [InlineData("shm")]
    public void StalledRankGivesEveryOtherRankAnErrorWithinTheTimeout(string backend)
    {
        using var release = new ManualResetEventSlim();
        var elapsed = new TimeSpan[3];
        var errors = RankHarness.Run(3, backend, group =>
        {
            var watch = Stopwatch.StartNew();
            try
            {
                if (group.Rank == 2)
                {
                    // Stall: never enter the collective until the others have given up.
                    release.Wait(TimeSpan.FromSeconds(20));
                    return;
                }

                var buffer = new float[100_000];
                group.AllSum<float>(buffer);
            }
            finally
            {
                elapsed[group.Rank] = watch.Elapsed;
                if (group.Rank != 2 && elapsed.Count(e => e != TimeSpan.Zero) == 2)
                {
                    release.Set();
                }
            }
        }, timeout: TimeSpan.FromSeconds(1));

        for (var rank = 0; rank < 2; rank++)
        {
            var error = Assert.IsType<CollectiveException>(errors[rank]);
            Assert.Equal("AllReduce", error.Operation);
            Assert.NotNull(error.PeerRank);
            Assert.Contains("rank", error.Message);
            Assert.True(elapsed[rank] < TimeSpan.FromSeconds(4), $"rank {rank} took {elapsed[rank]}");
        }

        // Someone names the staller itself.
        Assert.Contains(errors.Take(2), e => ((CollectiveException)e!).PeerRank == 2);
    }

    [Theory]
    [InlineData("ring")]
    [InlineData("shm")]
    public void RankThatLeavesMidOperationFailsTheOthersFast(string backend)
    {
        var elapsed = new TimeSpan[3];
        var errors = RankHarness.Run(3, backend, group =>
        {
            var watch = Stopwatch.StartNew();
            try
            {
                var buffer = new float[50_000];
                group.AllSum<float>(buffer);
                if (group.Rank == 1)
                {
                    // Rank 1 "dies": its connections close (and, for shm, its abort flag is set by the failure below).
                    group.Transport.Dispose();
                    throw new InvalidOperationException("rank 1 exits");
                }

                group.AllSum<float>(buffer);
            }
            finally
            {
                elapsed[group.Rank] = watch.Elapsed;
            }
        }, timeout: TimeSpan.FromSeconds(2));

        Assert.IsType<InvalidOperationException>(errors[1]);
        foreach (var rank in new[] { 0, 2 })
        {
            Assert.IsType<CollectiveException>(errors[rank]);
            Assert.True(elapsed[rank] < TimeSpan.FromSeconds(5), $"rank {rank} took {elapsed[rank]}");
        }
    }

    [Fact]
    public void GroupReformsOnTheSamePortAfterAFailure()
    {
        var port = RankHarness.FreePort();
        var first = Run(port, failRank: 1);
        Assert.IsType<InvalidOperationException>(first[1]);
        Assert.All(new[] { first[0], first[2] }, e => Assert.IsType<CollectiveException>(e));

        var second = Run(port, failRank: -1);
        Assert.All(second, Assert.Null);

        static Exception?[] Run(int port, int failRank)
        {
            var errors = new Exception?[3];
            var threads = Enumerable.Range(0, 3).Select(rank => new Thread(() =>
            {
                try
                {
                    using var group = Group.Init(RankHarness.Options(rank, 3, port, "ring", TimeSpan.FromSeconds(2)));
                    if (rank == failRank)
                    {
                        throw new InvalidOperationException("rank fails before the collective");
                    }

                    Span<int> value = [rank + 1];
                    group.AllSum(value);
                    Assert.Equal(6, value[0]);
                }
                catch (Exception e)
                {
                    errors[rank] = e;
                }
            })).ToList();
            threads.ForEach(t => t.Start());
            threads.ForEach(t => Assert.True(t.Join(TimeSpan.FromSeconds(30))));
            return errors;
        }
    }

    [Fact]
    public void CoordinatorPortInUseIsReportedClearly()
    {
        using var squatter = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        squatter.Bind(new IPEndPoint(IPAddress.Any, 0));
        squatter.Listen();
        var port = ((IPEndPoint)squatter.LocalEndPoint!).Port;

        var error = Assert.Throws<CollectiveException>(() => Group.Init(RankHarness.Options(0, 2, port, "ring")));
        Assert.Contains("already in use", error.Message);
        Assert.Contains(port.ToString(), error.Message);
    }

    [Fact]
    public void UnreachableCoordinatorFailsAfterTheConnectTimeout()
    {
        var options = RankHarness.Options(1, 2, RankHarness.FreePort(), "ring");
        options.ConnectTimeout = TimeSpan.FromSeconds(1);
        var watch = Stopwatch.StartNew();
        var error = Assert.Throws<CollectiveException>(() => Group.Init(options));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5));
        Assert.Equal(0, error.PeerRank);
        Assert.Contains("coordinator", error.Message);
    }

    [Fact]
    public void RefusedDataConnectionNamesThePeer()
    {
        using var listener = DataPlaneListener.Bind("127.0.0.1");
        DataPlanePeer[] peers = [new("127.0.0.1", RankHarness.FreePort(), listener.Endpoint.HostId), listener.Endpoint];
        var options = RankHarness.Options(1, 2, RankHarness.FreePort(), "tcp");
        var watch = Stopwatch.StartNew();
        var error = Assert.Throws<CollectiveException>(() => Group.Init(options, listener, peers, Guid.NewGuid()));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5));
        Assert.Equal(0, error.PeerRank);
        Assert.Contains("cannot connect to rank 0", error.Message);
    }

    [Fact]
    public void MissingRankIsNamedByTheCoordinator()
    {
        var options = RankHarness.Options(0, 3, RankHarness.FreePort(), "ring");
        options.ConnectTimeout = TimeSpan.FromSeconds(1);
        var error = Assert.Throws<CollectiveException>(() => Group.Init(options));
        Assert.Contains("ranks 1, 2 did not join", error.Message);
    }

    [Fact]
    public void StrictInitWithoutLaunchEnvironmentFails()
    {
        Assert.Null(Environment.GetEnvironmentVariable(DistributedEnvironment.Rank));
        var error = Assert.Throws<CollectiveException>(() => Group.Init(strict: true));
        Assert.Contains("granary launch", error.Message);
        using var single = Group.Init(strict: false);
        Assert.Equal(1, single.Size);
    }
}
