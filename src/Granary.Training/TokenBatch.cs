namespace Granary.Training;

/// <summary>
/// Right-padded token ids [batch, length] and labels aligned with them (Hugging Face convention: position t's label is
/// the token that should follow it one step earlier, i.e. the loss predicts labels[t + 1] from ids[..t];
/// <see cref="Ignored"/> marks prompt and padding).
/// </summary>
public sealed class TokenBatch
{
    public const int Ignored = -100;

    public TokenBatch(int batchSize, int length, int[] ids, int[] labels)
    {
        if (batchSize <= 0 || length <= 0 || ids.Length != batchSize * length || labels.Length != ids.Length)
        {
            throw new ArgumentException($"A batch of {batchSize} x {length} needs that many ids and labels; got {ids.Length} and {labels.Length}.");
        }

        BatchSize = batchSize;
        Length = length;
        Ids = ids;
        Labels = labels;
    }

    public int BatchSize { get; }

    public int Length { get; }

    public int[] Ids { get; }

    public int[] Labels { get; }

    /// <summary>Positions whose next token is a target, with that target.</summary>
    public (int[] Rows, int[] Targets) Targets()
    {
        var rows = new List<int>();
        var targets = new List<int>();
        for (var b = 0; b < BatchSize; b++)
        {
            for (var t = 0; t + 1 < Length; t++)
            {
                var label = Labels[(b * Length) + t + 1];
                if (label != Ignored)
                {
                    rows.Add((b * Length) + t);
                    targets.Add(label);
                }
            }
        }

        return ([.. rows], [.. targets]);
    }

    /// <summary>Rows [start, start + count) as a batch of their own (data-parallel slices).</summary>
    public TokenBatch Slice(int start, int count) =>
        new(count, Length, Ids[(start * Length)..((start + count) * Length)], Labels[(start * Length)..((start + count) * Length)]);
}
