using Granary.Models.Sharding;

namespace Granary.Models.Tests.Sharding;

public sealed class PipelinePlanTests
{
    [Fact]
    public void EqualMemoryGivesEqualRuns() =>
        Assert.Equal([new ShardRange(0, 5), new ShardRange(5, 5)], PipelinePlan.AssignLayers(10, [1L << 30, 1L << 30]));

    [Fact]
    public void LayersFollowFreeMemory()
    {
        // 10 layers, 3:1 memory: one layer each, then the spare 8 split 6:2.
        Assert.Equal([new ShardRange(0, 7), new ShardRange(7, 3)], PipelinePlan.AssignLayers(10, [3_000, 1_000]));

        // Spare 25 over 2:1:1 is 12.5 / 6.25 / 6.25: the leftover layer goes to the largest remainder.
        Assert.Equal(
            [new ShardRange(0, 14), new ShardRange(14, 7), new ShardRange(21, 7)],
            PipelinePlan.AssignLayers(28, [16L << 30, 8L << 30, 8L << 30]));
    }

    [Fact]
    public void EveryStageGetsALayerEvenWithLittleMemory() =>
        Assert.Equal([new ShardRange(0, 3), new ShardRange(3, 1)], PipelinePlan.AssignLayers(4, [1L << 40, 1]));

    [Fact]
    public void MoreStagesThanLayersIsRefused() =>
        Assert.Contains("2 layers cannot be spread over 3 pipeline stages", Assert.Throws<ArgumentException>(() => PipelinePlan.AssignLayers(2, [1, 1, 1])).Message);
}
