namespace Granary.Models;

/// <summary>Options for <see cref="ModelLoader.Load"/>.</summary>
public sealed class ModelLoadOptions
{
    public const int DefaultPrefillChunkSize = 512;

    /// <summary>
    /// Prompts are run at most this many tokens at a time; activation scratch is sized for one chunk, so this bounds
    /// memory for long prompts. Default 512.
    /// </summary>
    public int PrefillChunkSize { get; set; } = DefaultPrefillChunkSize;

    public void Validate()
    {
        if (PrefillChunkSize < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(PrefillChunkSize), PrefillChunkSize, "The prefill chunk size must be at least 1.");
        }
    }
}
