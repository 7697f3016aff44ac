using System.Globalization;

namespace Granary.Abstractions;

/// <summary>
/// One shard of a model on one silo. Its grain key starts with the silo name, which is how the silo-pinned
/// placement finds the silo: "{silo}/{index}/{model}" (the model reference may itself contain '/').
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.ShardId")]
public sealed record ShardId(
    [property: Id(0)] string Model,
    [property: Id(1)] string SiloName,
    [property: Id(2)] int Index)
{
    public string ToGrainKey()
    {
        SiloPinnedKey.ValidateSiloName(SiloName);
        return string.Create(CultureInfo.InvariantCulture, $"{SiloName}{SiloPinnedKey.Separator}{Index}{SiloPinnedKey.Separator}{Model}");
    }

    public static ShardId Parse(string grainKey)
    {
        var parts = grainKey.Split(SiloPinnedKey.Separator, 3);
        if (parts.Length != 3 || parts[0].Length == 0 || parts[2].Length == 0
            || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var index))
        {
            throw new FormatException($"'{grainKey}' is not a shard key of the form 'silo/index/model'.");
        }

        return new ShardId(parts[2], parts[0], index);
    }

    public override string ToString() => ToGrainKey();
}

/// <summary>Keys of grains that live on a named silo: the silo name, optionally followed by '/' and more.</summary>
public static class SiloPinnedKey
{
    public const char Separator = '/';

    public static string SiloNameOf(string grainKey)
    {
        var end = grainKey.IndexOf(Separator);
        return end < 0 ? grainKey : grainKey[..end];
    }

    /// <summary>Silo names become key prefixes, so they must be non-empty and free of the separator.</summary>
    public static void ValidateSiloName(string siloName)
    {
        if (string.IsNullOrWhiteSpace(siloName) || siloName.Contains(Separator))
        {
            throw new ArgumentException($"Silo name '{siloName}' is not valid: it must be non-empty and must not contain '{Separator}'.", nameof(siloName));
        }
    }
}
