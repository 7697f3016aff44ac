namespace Granary.Models.Generation;

/// <summary>How the next token is picked from the logits. Defaults leave the distribution untouched.</summary>
public sealed record SamplingOptions
{
    /// <summary>0 picks the most likely token (greedy); higher values flatten the distribution.</summary>
    public float Temperature { get; init; } = 1.0f;

    /// <summary>Keep the smallest set of most likely tokens whose probabilities add up to at least this (1 = off).</summary>
    public float TopP { get; init; } = 1.0f;

    /// <summary>Keep only the k most likely tokens (0 = off).</summary>
    public int TopK { get; init; }

    /// <summary>Drop tokens whose probability is below this fraction of the most likely one's (0 = off).</summary>
    public float MinP { get; init; }

    /// <summary>Divides positive and multiplies negative logits of recently seen tokens (1 = off), as in Hugging Face.</summary>
    public float RepetitionPenalty { get; init; } = 1.0f;

    /// <summary>How many of the latest tokens (prompt included) the repetition penalty looks at.</summary>
    public int RepetitionContextSize { get; init; } = 64;

    /// <summary>Seed of the random draw; null draws from a random seed.</summary>
    public int? Seed { get; init; }

    public static SamplingOptions Greedy { get; } = new() { Temperature = 0 };

    /// <summary>Throws <see cref="ArgumentException"/> naming the first value out of range.</summary>
    public void Validate()
    {
        if (!(Temperature >= 0) || float.IsInfinity(Temperature))
        {
            throw new ArgumentException($"temperature must be a finite number >= 0, got {Temperature}.");
        }

        if (!(TopP > 0 && TopP <= 1))
        {
            throw new ArgumentException($"top_p must be in (0, 1], got {TopP}.");
        }

        if (TopK < 0)
        {
            throw new ArgumentException($"top_k must be >= 0, got {TopK}.");
        }

        if (!(MinP >= 0 && MinP < 1))
        {
            throw new ArgumentException($"min_p must be in [0, 1), got {MinP}.");
        }

        if (!(RepetitionPenalty > 0) || float.IsInfinity(RepetitionPenalty))
        {
            throw new ArgumentException($"repetition_penalty must be a finite number > 0, got {RepetitionPenalty}.");
        }

        if (RepetitionContextSize < 0)
        {
            throw new ArgumentException($"repetition context size must be >= 0, got {RepetitionContextSize}.");
        }
    }
}
