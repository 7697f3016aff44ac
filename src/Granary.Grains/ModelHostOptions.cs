using Granary.Models.Batching;
using Granary.Models.BuiltIn;
using Microsoft.Extensions.Options;

namespace Granary.Grains;

/// <summary>Where a silo finds models and what it runs them on.</summary>
public sealed class ModelHostOptions
{
    /// <summary>The reference that names the built-in default model.</summary>
    public const string BuiltInModelReference = "builtin";

    /// <summary>Relative model references resolve under this folder. Default: the Granary cache's models folder.</summary>
    public string ModelDirectory { get; set; } = Path.Combine(BuiltInModel.CacheDirectory, "models");

    /// <summary>
    /// Where models with adapters ("{model}@adapters={path}" references) are kept merged, one folder per model,
    /// adapters and their files' versions, reused after a restart. Default: the Granary cache's fused folder.
    /// </summary>
    public string FusedModelDirectory { get; set; } = Path.Combine(BuiltInModel.CacheDirectory, "fused");

    /// <summary>Compute backend: "cpu" (default), "cuda", "metal".</summary>
    public string Backend { get; set; } = "cpu";

    /// <summary>CPU worker threads; null uses every processor.</summary>
    public int? Threads { get; set; }

    /// <summary>
    /// At most this many bytes are offered to models, whatever the backend reports; null offers all it reports.
    /// Lets several silos share one machine without each claiming all of its memory.
    /// </summary>
    public long? MemoryLimitBytes { get; set; }

    /// <summary>
    /// Extra memory a shard needs beyond its weights (KV cache, activations), as a fraction of the weights.
    /// Default 0.25.
    /// </summary>
    public double MemoryHeadroom { get; set; } = 0.25;

    /// <summary>How concurrent generations of a whole-model shard share its decode batch (configuration section Batching).</summary>
    public BatchingOptions Batching { get; set; } = new();
}

internal sealed class ModelHostOptionsValidator : IValidateOptions<ModelHostOptions>
{
    public ValidateOptionsResult Validate(string? name, ModelHostOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ModelDirectory))
        {
            failures.Add("ModelDirectory must be set.");
        }

        if (string.IsNullOrWhiteSpace(options.FusedModelDirectory))
        {
            failures.Add("FusedModelDirectory must be set.");
        }

        if (string.IsNullOrWhiteSpace(options.Backend))
        {
            failures.Add("Backend must be set (\"cpu\", \"cuda\" or \"metal\").");
        }

        if (options.Threads is < 1)
        {
            failures.Add($"Threads must be at least 1, got {options.Threads}.");
        }

        if (options.MemoryLimitBytes is < 0)
        {
            failures.Add($"MemoryLimitBytes must not be negative, got {options.MemoryLimitBytes}.");
        }

        if (!(options.MemoryHeadroom >= 0) || double.IsInfinity(options.MemoryHeadroom))
        {
            failures.Add($"MemoryHeadroom must be a finite number >= 0, got {options.MemoryHeadroom}.");
        }

        try
        {
            options.Batching.Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            failures.Add($"Batching: {e.Message}");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
