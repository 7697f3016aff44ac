using System.Globalization;
using System.Text;
using Granary.Abstractions;

namespace Granary.Grains;

/// <summary>
/// Turns what the live silos offer into a layout. The engine runs whole models, so a plan is one pipeline stage
/// with a tensor group of one, on the silo with the most memory to spare that has the model and room for it.
/// </summary>
public static class LayoutPlanner
{
    public static ModelPlan Plan(string model, int version, IReadOnlyCollection<ModelProbe> probes, DateTimeOffset now)
    {
        var candidates = probes
            .Where(probe => probe.Found && probe.AvailableBytes >= probe.RequiredBytes)
            .OrderByDescending(probe => probe.AvailableBytes)
            .ThenBy(probe => probe.SiloName, StringComparer.Ordinal)
            .ToList();
        if (candidates.Count == 0)
        {
            throw new InsufficientClusterCapacityException(Explain(model, probes));
        }

        var chosen = candidates[0];
        var shard = new ShardAssignment(
            new ShardId(model, chosen.SiloName, 0),
            version,
            PipelineStage: 0,
            PipelineStageCount: 1,
            FirstLayer: 0,
            LayerCount: chosen.LayerCount,
            TensorRank: 0,
            TensorGroupSize: 1);
        return new ModelPlan(model, version, chosen.LayerCount, chosen.WeightBytes, [new PipelineStage(0, 0, chosen.LayerCount, [shard])], now);
    }

    private static string Explain(string model, IReadOnlyCollection<ModelProbe> probes)
    {
        var message = new StringBuilder().Append(CultureInfo.InvariantCulture, $"No live silo can hold model '{model}'");
        if (probes.Count == 0)
        {
            return message.Append(": the cluster has no active silos.").ToString();
        }

        message.Append(':');
        foreach (var probe in probes.OrderBy(probe => probe.SiloName, StringComparer.Ordinal))
        {
            message.Append(CultureInfo.InvariantCulture, $" silo '{probe.SiloName}' ");
            message.Append(probe.Found
                ? string.Create(CultureInfo.InvariantCulture, $"needs {Gib(probe.RequiredBytes)} GiB, offers {Gib(probe.AvailableBytes)} GiB;")
                : $"cannot load it ({probe.Problem});");
        }

        return message.ToString().TrimEnd(';') + ".";
    }

    private static string Gib(long bytes) => (bytes / (1024.0 * 1024 * 1024)).ToString("F2", CultureInfo.InvariantCulture);
}
