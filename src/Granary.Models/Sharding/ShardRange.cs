namespace Granary.Models.Sharding;

/// <summary>A contiguous range [Start, Start + Count) of features, heads, experts or layers held by one rank.</summary>
public readonly record struct ShardRange(int Start, int Count)
{
    public int End => Start + Count;

    public bool Contains(int index) => index >= Start && index < End;

    /// <summary>
    /// Part <paramref name="part"/> of <paramref name="total"/> items split into <paramref name="parts"/> nearly equal
    /// runs of whole <paramref name="unit"/>s; the first parts take one unit more when the units do not divide evenly.
    /// </summary>
    public static ShardRange Balanced(int total, int parts, int part, int unit = 1)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(parts);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(unit);
        if (total % unit != 0)
        {
            throw new ArgumentException($"{total} is not a whole number of units of {unit}.", nameof(total));
        }

        var units = total / unit;
        var (share, extra) = Math.DivRem(units, parts);
        var start = (part * share) + Math.Min(part, extra);
        var count = share + (part < extra ? 1 : 0);
        return new ShardRange(start * unit, count * unit);
    }
}
