using System.Globalization;
using System.Text;
using Granary.Abstractions;
using Granary.Models.Sharding;

namespace Granary.Grains;

/// <summary>
/// Turns what the live silos offer into a layout: the whole model on one silo, a tensor-parallel group that splits
/// every layer over several silos (by attention heads, MLP features, experts and vocabulary), or pipeline stages that
/// run consecutive runs of layers (sized by each silo's free memory). Silos that lack the model are left out, and a
/// split only uses silos of one backend. Plans are deterministic for equal probes.
/// </summary>
public static class LayoutPlanner
{
    public static ModelPlan Plan(
        string model,
        int version,
        IReadOnlyCollection<ModelProbe> probes,
        DateTimeOffset now,
        ShardLayout layout = ShardLayout.Auto,
        int maxShards = 8)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxShards, 1);
        var candidates = probes
            .Where(probe => probe.Found)
            .OrderByDescending(probe => probe.AvailableBytes)
            .ThenBy(probe => probe.SiloName, StringComparer.Ordinal)
            .ToList();
        var plan = layout switch
        {
            ShardLayout.Single => Single(model, version, candidates, now),
            ShardLayout.Tensor => Tensor(model, version, candidates, now, Widths(candidates, maxShards).Reverse())
                ?? Auto(model, version, candidates, now, maxShards),
            ShardLayout.Pipeline => Pipeline(model, version, candidates, now, Widths(candidates, maxShards).Reverse())
                ?? Auto(model, version, candidates, now, maxShards),
            _ => Auto(model, version, candidates, now, maxShards),
        };
        return plan ?? throw new InsufficientClusterCapacityException(Explain(model, probes, layout));
    }

    private static ModelPlan? Auto(string model, int version, List<ModelProbe> candidates, DateTimeOffset now, int maxShards) =>
        Single(model, version, candidates, now)
        ?? Tensor(model, version, candidates, now, Widths(candidates, maxShards))
        ?? Pipeline(model, version, candidates, now, Widths(candidates, maxShards));

    /// <summary>Split widths worth trying, smallest first: 2 up to the usable silos of the leading backend.</summary>
    private static IEnumerable<int> Widths(List<ModelProbe> candidates, int maxShards)
    {
        var usable = candidates.Count == 0 ? 0 : candidates.Count(probe => probe.Backend == candidates[0].Backend);
        return Enumerable.Range(2, Math.Max(0, Math.Min(usable, maxShards) - 1));
    }

    private static ModelPlan? Single(string model, int version, List<ModelProbe> candidates, DateTimeOffset now)
    {
        var chosen = candidates.FirstOrDefault(probe => probe.AvailableBytes >= probe.RequiredBytes);
        if (chosen is null)
        {
            return null;
        }

        var shard = new ShardAssignment(new ShardId(model, chosen.SiloName, 0), version, 0, 1, 0, chosen.LayerCount, 0, 1);
        return new ModelPlan(model, version, chosen.LayerCount, chosen.WeightBytes, [new PipelineStage(0, 0, chosen.LayerCount, [shard])], now);
    }

    /// <summary>The first width that divides the heads (and experts) and whose silos each hold their share.</summary>
    private static ModelPlan? Tensor(string model, int version, List<ModelProbe> candidates, DateTimeOffset now, IEnumerable<int> widths)
    {
        foreach (var width in widths)
        {
            var group = SameBackend(candidates).Take(width).ToList();
            var reference = group[0];
            var share = (reference.RequiredBytes + width - 1) / width;
            if (reference.AttentionHeadCount % width != 0
                || (reference.ExpertCount > 0 && reference.ExpertCount < width)
                || group.Any(probe => probe.AvailableBytes < share))
            {
                continue;
            }

            var shards = group
                .Select((probe, rank) => new ShardAssignment(new ShardId(model, probe.SiloName, rank), version, 0, 1, 0, reference.LayerCount, rank, width))
                .ToArray();
            return new ModelPlan(model, version, reference.LayerCount, reference.WeightBytes, [new PipelineStage(0, 0, reference.LayerCount, shards)], now);
        }

        return null;
    }

    /// <summary>The first width whose stages, given layers in proportion to their free memory, each hold their layers.</summary>
    private static ModelPlan? Pipeline(string model, int version, List<ModelProbe> candidates, DateTimeOffset now, IEnumerable<int> widths)
    {
        foreach (var width in widths)
        {
            var stages = SameBackend(candidates).Take(width).ToList();
            var reference = stages[0];
            if (reference.LayerCount < width || stages.Any(probe => probe.AvailableBytes <= 0))
            {
                continue;
            }

            var layers = PipelinePlan.AssignLayers(reference.LayerCount, [.. stages.Select(probe => probe.AvailableBytes)]);
            if (stages.Where((probe, stage) => probe.AvailableBytes < reference.RequiredBytes * layers[stage].Count / reference.LayerCount).Any())
            {
                continue;
            }

            var plan = stages
                .Select((probe, stage) => new PipelineStage(stage, layers[stage].Start, layers[stage].Count, [
                    new ShardAssignment(new ShardId(model, probe.SiloName, stage), version, stage, width, layers[stage].Start, layers[stage].Count, 0, 1)]))
                .ToArray();
            return new ModelPlan(model, version, reference.LayerCount, reference.WeightBytes, plan, now);
        }

        return null;
    }

    private static IEnumerable<ModelProbe> SameBackend(List<ModelProbe> candidates) =>
        candidates.Where(probe => string.Equals(probe.Backend, candidates[0].Backend, StringComparison.Ordinal));

    private static string Explain(string model, IReadOnlyCollection<ModelProbe> probes, ShardLayout layout)
    {
        var message = new StringBuilder().Append(CultureInfo.InvariantCulture, $"No set of live silos can hold model '{model}'");
        if (layout == ShardLayout.Single)
        {
            message.Append(" on one silo");
        }

        if (probes.Count == 0)
        {
            return message.Append(": the cluster has no active silos.").ToString();
        }

        message.Append(':');
        foreach (var probe in probes.OrderBy(probe => probe.SiloName, StringComparer.Ordinal))
        {
            message.Append(CultureInfo.InvariantCulture, $" silo '{probe.SiloName}' ");
            message.Append(probe.Found
                ? string.Create(CultureInfo.InvariantCulture, $"offers {Gib(probe.AvailableBytes)} GiB of the {Gib(probe.RequiredBytes)} GiB the whole model needs;")
                : $"cannot load it ({probe.Problem});");
        }

        return message.ToString().TrimEnd(';') + ".";
    }

    private static string Gib(long bytes) => (bytes / (1024.0 * 1024 * 1024)).ToString("F2", CultureInfo.InvariantCulture);
}
