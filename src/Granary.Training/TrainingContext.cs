namespace Granary.Training;

/// <summary>
/// Per-step state of a forward pass: whether dropout is active and the seed it draws from. A module's dropout mask
/// depends only on (seed, module name), so recomputing a layer for gradient checkpointing draws the same mask.
/// </summary>
internal sealed class TrainingContext(bool isTraining, ulong seed)
{
    public bool IsTraining { get; } = isTraining;

    public ulong Seed { get; } = seed;

    public float[] Dropout(float[] input, float probability, string module, out bool[] kept)
    {
        var random = new Random((int)(Seed ^ StableHash(module)));
        var keepScale = 1 / (1 - probability);
        var output = new float[input.Length];
        kept = new bool[input.Length];
        for (var i = 0; i < input.Length; i++)
        {
            if (random.NextSingle() >= probability)
            {
                kept[i] = true;
                output[i] = input[i] * keepScale;
            }
        }

        return output;
    }

    // FNV-1a: string.GetHashCode differs between processes, and a resumed run should draw the same masks.
    private static ulong StableHash(string text)
    {
        var hash = 14695981039346656037UL;
        foreach (var c in text)
        {
            hash = (hash ^ c) * 1099511628211UL;
        }

        return hash ^ (hash >> 32);
    }
}
