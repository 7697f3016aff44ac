namespace Granary.Models.Sharding;

/// <summary>How the decoder layers of a model are laid out over pipeline stages.</summary>
public static class PipelinePlan
{
    /// <summary>
    /// Contiguous runs of layers, one per stage in stage order, sized in proportion to each stage's free memory
    /// (largest remainders get the leftover layers) with at least one layer per stage.
    /// </summary>
    public static ShardRange[] AssignLayers(int layerCount, IReadOnlyList<long> freeBytes)
    {
        ArgumentNullException.ThrowIfNull(freeBytes);
        var stages = freeBytes.Count;
        if (stages == 0 || layerCount < stages)
        {
            throw new ArgumentException($"{layerCount} layers cannot be spread over {stages} pipeline stages: each stage needs at least one.");
        }

        if (freeBytes.Any(b => b <= 0))
        {
            throw new ArgumentException($"Every stage must report free memory; got [{string.Join(", ", freeBytes)}] bytes.", nameof(freeBytes));
        }

        // Each stage first gets its one layer; the rest are shared by memory.
        var total = freeBytes.Sum(b => (double)b);
        var spare = layerCount - stages;
        var shares = freeBytes.Select(b => spare * (b / total)).ToArray();
        var counts = shares.Select(s => 1 + (int)Math.Floor(s)).ToArray();
        foreach (var stage in Enumerable.Range(0, stages).OrderByDescending(s => shares[s] - Math.Floor(shares[s])).ThenBy(s => s).Take(layerCount - counts.Sum()))
        {
            counts[stage]++;
        }

        var ranges = new ShardRange[stages];
        var start = 0;
        for (var stage = 0; stage < stages; stage++)
        {
            ranges[stage] = new ShardRange(start, counts[stage]);
            start += counts[stage];
        }

        return ranges;
    }
}
