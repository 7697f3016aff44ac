using System.Diagnostics;
using Granary.Abstractions;

namespace Granary.Runtime.Tests;

[Collection(InProcessClusterCollection.Name)]
public sealed class PlacementTests(InProcessCluster fixture)
{
    private IGrainFactory Grains => fixture.Cluster.GrainFactory;

    [Fact]
    public async Task Host_agents_run_on_the_silo_their_key_names()
    {
        foreach (var siloName in fixture.SiloNames)
        {
            var report = await Grains.GetGrain<IHostAgentGrain>(siloName).GetReportAsync();
            Assert.Equal(siloName, report.SiloName);
            Assert.Equal("cpu", report.Backend);
        }
    }

    [Fact]
    public async Task Shards_load_into_the_model_host_of_the_silo_their_key_names()
    {
        var model = TinyModel.Directory;
        foreach (var siloName in fixture.SiloNames)
        {
            for (var index = 1; index <= 3; index++)
            {
                var id = new ShardId(model, siloName, index);
                var status = await Grains.GetGrain<IShardGrain>(id.ToGrainKey()).LoadAsync(WholeModel(id));
                Assert.Equal(id, status.Assignment.Shard);
            }
        }

        foreach (var siloName in fixture.SiloNames)
        {
            for (var index = 1; index <= 3; index++)
            {
                foreach (var holder in fixture.SiloNames)
                {
                    var held = fixture.ModelHostOf(holder).Find(new ShardId(model, siloName, index)) is not null;
                    Assert.Equal(holder == siloName, held);
                }
            }
        }

        foreach (var siloName in fixture.SiloNames)
        {
            for (var index = 1; index <= 3; index++)
            {
                await Grains.GetGrain<IShardGrain>(new ShardId(model, siloName, index).ToGrainKey()).UnloadAsync();
            }
        }
    }

    [Fact]
    public async Task A_shard_pinned_to_an_unknown_silo_fails_fast_instead_of_landing_elsewhere()
    {
        var id = new ShardId(TinyModel.Directory, "no-such-silo", 0);
        var clock = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<SiloNotInClusterException>(
            () => Grains.GetGrain<IShardGrain>(id.ToGrainKey()).LoadAsync(WholeModel(id)));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"Placement took {clock.Elapsed} to fail.");
        Assert.Equal("no-such-silo", error.SiloName);
        Assert.Contains("no-such-silo", error.Message, StringComparison.Ordinal);
        foreach (var siloName in fixture.SiloNames)
        {
            Assert.Null(fixture.ModelHostOf(siloName).Find(id));
            Assert.Contains(siloName, error.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Shard_keys_round_trip_with_slashes_in_the_model_reference()
    {
        var id = new ShardId("/models/org/name", "host-1", 7);
        Assert.Equal("host-1/7//models/org/name", id.ToGrainKey());
        Assert.Equal(id, ShardId.Parse(id.ToGrainKey()));
        Assert.Equal("host-1", SiloPinnedKey.SiloNameOf(id.ToGrainKey()));
        Assert.Throws<ArgumentException>(() => new ShardId("m", "bad/name", 0).ToGrainKey());
        Assert.Throws<FormatException>(() => ShardId.Parse("host/x/model"));
    }

    private static ShardAssignment WholeModel(ShardId id) => new(id, 1, 0, 1, 0, 3, 0, 1);
}
