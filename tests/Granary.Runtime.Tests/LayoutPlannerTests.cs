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
        Assert.Equal((4, 4, 12), (plan.Version, plan.Leader.PlanVersion, plan.LayerCount));
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
        Assert.Contains("silo 'a' needs", error.Message, StringComparison.Ordinal);
        Assert.Contains("silo 'c' cannot load it (no config.json)", error.Message, StringComparison.Ordinal);
        var empty = Assert.Throws<InsufficientClusterCapacityException>(() => LayoutPlanner.Plan("m", 1, [], Now));
        Assert.Contains("no active silos", empty.Message, StringComparison.Ordinal);
    }

    private static ModelProbe Found(string silo, long available) => new(silo, true, "/m", 12, 300, 400, "cpu", available, null);

    private static ModelProbe Missing(string silo) => new(silo, false, "/m", 0, 0, 0, "cpu", 10_000, "no config.json");
}
