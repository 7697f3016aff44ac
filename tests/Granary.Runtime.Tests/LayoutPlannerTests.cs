using Granary.Abstractions;
using Granary.Grains;

namespace Granary.Runtime.Tests;

public sealed class LayoutPlannerTests
{
    private static readonly DateTimeOffset Now = DateTimeOffset.UnixEpoch;

    [Fact]
    public void Picks_the_silo_with_the_most_memory_to_spare_among_those_that_have_the_model()
    {
        var plan = LayoutPlanner.Plan("m", 4, [Found("a", available: 500), Found("b", available: 900), Missing("c")], Now);
        Assert.Equal(new ShardId("m", "b", 0), plan.Leader.Shard);
        Assert.Equal((4, 4, 12, "single"), (plan.Version, plan.Leader.PlanVersion, plan.LayerCount, plan.Layout));
    }

    [Fact]
    public void Ties_go_to_the_first_silo_name_so_plans_are_deterministic()
    {
        var plan = LayoutPlanner.Plan("m", 1, [Found("b", available: 500), Found("a", available: 500)], Now);
        Assert.Equal("a", plan.Leader.Shard.SiloName);
    }

    [Fact]
    public void When_no_silo_has_room_the_error_lists_what_each_offered()
    {
        var error = Assert.Throws<InsufficientClusterCapacityException>(
            () => LayoutPlanner.Plan("m", 1, [Found("a", available: 100), Missing("c")], Now));
        Assert.Contains("silo 'a' offers", error.Message, StringComparison.Ordinal);
        Assert.Contains("silo 'c' cannot load it (no config.json)", error.Message, StringComparison.Ordinal);
        var empty = Assert.Throws<InsufficientClusterCapacityException>(() => LayoutPlanner.Plan("m", 1, [], Now));
        Assert.Contains("no active silos", empty.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Auto_splits_a_model_no_silo_can_hold_over_as_few_silos_as_hold_their_shares()
    {
        // 400 bytes needed: no silo holds it whole, two of them hold 200 each.
        var plan = LayoutPlanner.Plan("m", 1, [Found("a", 250), Found("b", 300), Found("c", 210), Missing("d")], Now);
        Assert.Equal("tensor", plan.Layout);
        Assert.Equal([("b", 0, 2), ("a", 1, 2)], plan.Shards.Select(shard => (shard.Shard.SiloName, shard.TensorRank, shard.TensorGroupSize)));
        Assert.All(plan.Shards, shard => Assert.Equal((0, 12), (shard.FirstLayer, shard.LayerCount)));
        Assert.Equal([0, 1], plan.Shards.Select(shard => shard.WorldRank));
    }

    [Fact]
    public void Tensor_uses_the_widest_split_that_divides_the_heads_and_fits()
    {
        // 12 heads: 4 silos could take part but 4 divides 12, 5 would not.
        ModelProbe[] probes = [Found("a", 900), Found("b", 900), Found("c", 900), Found("d", 900), Found("e", 900)];
        var plan = LayoutPlanner.Plan("m", 1, probes, Now, ShardLayout.Tensor, maxShards: 8);
        Assert.Equal(["a", "b", "c", "d"], plan.Shards.Select(shard => shard.Shard.SiloName));
        Assert.Equal(2, LayoutPlanner.Plan("m", 1, probes, Now, ShardLayout.Tensor, maxShards: 2).ShardCount);
    }

    [Fact]
    public void Tensor_falls_back_to_one_silo_when_only_one_is_left()
    {
        var plan = LayoutPlanner.Plan("m", 2, [Found("a", 900), Missing("b")], Now, ShardLayout.Tensor);
        Assert.Equal("single", plan.Layout);
    }

    [Fact]
    public void Pipeline_gives_stages_layers_in_proportion_to_their_memory()
    {
        var plan = LayoutPlanner.Plan("m", 1, [Found("a", 300), Found("b", 600)], Now, ShardLayout.Pipeline);
        Assert.Equal("pipeline", plan.Layout);
        Assert.Equal([("b", 0, 8), ("a", 8, 4)], plan.Stages.Select(stage => (stage.TensorGroup[0].Shard.SiloName, stage.FirstLayer, stage.LayerCount)));
        Assert.Equal([(0, 2), (1, 2)], plan.Shards.Select(shard => (shard.PipelineStage, shard.PipelineStageCount)));
    }

    [Fact]
    public void Survivors_that_cannot_hold_their_shares_are_a_clear_error()
    {
        var error = Assert.Throws<InsufficientClusterCapacityException>(
            () => LayoutPlanner.Plan("m", 3, [Found("a", 150), Found("b", 150)], Now, ShardLayout.Tensor));
        Assert.Contains("silo 'a' offers", error.Message, StringComparison.Ordinal);
        // Single never splits, even where a split would fit.
        var single = Assert.Throws<InsufficientClusterCapacityException>(() => LayoutPlanner.Plan("m", 1, [Found("a", 300), Found("b", 300)], Now, ShardLayout.Single));
        Assert.Contains("on one silo", single.Message, StringComparison.Ordinal);
    }

    private static ModelProbe Found(string silo, long available) =>
        new(silo, true, "/m", 12, 300, 400, "cpu", available, null) { AttentionHeadCount = 12 };

    private static ModelProbe Missing(string silo) => new(silo, false, "/m", 0, 0, 0, "cpu", 10_000, "no config.json");
}
