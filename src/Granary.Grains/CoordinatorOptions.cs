using Microsoft.Extensions.Options;

namespace Granary.Grains;

/// <summary>Which layout the coordinator prefers for a model.</summary>
public enum ShardLayout
{
    /// <summary>The whole model on one silo when one can hold it; otherwise split over as few silos as can hold it, tensor parallel first.</summary>
    Auto,

    /// <summary>The whole model on one silo, never split.</summary>
    Single,

    /// <summary>Tensor parallel over as many live silos as can take part, up to <see cref="CoordinatorOptions.MaxShards"/>.</summary>
    Tensor,

    /// <summary>Pipeline parallel over as many live silos as can take part, up to <see cref="CoordinatorOptions.MaxShards"/>.</summary>
    Pipeline,
}

/// <summary>How the coordinator lays models out, waits for silos, and how often it re-plans a generation before giving up.</summary>
public sealed class CoordinatorOptions
{
    /// <summary>
    /// Preferred layout. Default <see cref="ShardLayout.Auto"/>. Tensor and Pipeline fall back to Auto when fewer than
    /// two live silos can take part (after a failure, say); such a plan is widened again once more silos are live.
    /// </summary>
    public ShardLayout Layout { get; set; } = ShardLayout.Auto;

    /// <summary>Most shards a split model gets. Default 8.</summary>
    public int MaxShards { get; set; } = 8;

    /// <summary>Collective backend of the shards' data plane: "auto" (shared memory between silos of one host, else TCP), "tcp", "ring", "mesh", "shm".</summary>
    public string DataPlaneBackend { get; set; } = "auto";

    /// <summary>How long a shard waits for a peer in a collective before its group fails. Default 10 s.</summary>
    public TimeSpan DataPlaneTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>How long the shards of a plan have to connect their data plane. Default 20 s.</summary>
    public TimeSpan GroupFormationTimeout { get; set; } = TimeSpan.FromSeconds(20);

    /// <summary>How long a silo has to answer a probe or an unload. Default 10 s.</summary>
    public TimeSpan ProbeTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Re-plans allowed within one generation. Default 3.</summary>
    public int MaxFailovers { get; set; } = 3;

    /// <summary>
    /// How long a re-plan after a failure keeps trying (the failed silo must first be declared dead, a few seconds
    /// with Granary's failure detection) before its error goes to the caller. Default 30 s.
    /// </summary>
    public TimeSpan FailoverTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Pause between re-plan attempts. Default 500 ms.</summary>
    public TimeSpan FailoverRetryDelay { get; set; } = TimeSpan.FromMilliseconds(500);
}

public sealed class CoordinatorOptionsValidator : IValidateOptions<CoordinatorOptions>
{
    public ValidateOptionsResult Validate(string? name, CoordinatorOptions options)
    {
        var failures = new List<string>();
        if (options.ProbeTimeout <= TimeSpan.Zero)
        {
            failures.Add($"ProbeTimeout must be positive, got {options.ProbeTimeout}.");
        }

        if (options.FailoverTimeout < TimeSpan.Zero || options.FailoverRetryDelay <= TimeSpan.Zero)
        {
            failures.Add($"FailoverTimeout must be >= 0 and FailoverRetryDelay positive, got {options.FailoverTimeout} and {options.FailoverRetryDelay}.");
        }

        if (!Enum.IsDefined(options.Layout))
        {
            failures.Add($"Layout must be Auto, Single, Tensor or Pipeline, got {options.Layout}.");
        }

        if (options.MaxShards < 1)
        {
            failures.Add($"MaxShards must be at least 1, got {options.MaxShards}.");
        }

        if (string.IsNullOrWhiteSpace(options.DataPlaneBackend))
        {
            failures.Add("DataPlaneBackend must be set (\"auto\", \"tcp\", \"ring\", \"mesh\" or \"shm\").");
        }

        if (options.DataPlaneTimeout <= TimeSpan.Zero || options.GroupFormationTimeout <= TimeSpan.Zero)
        {
            failures.Add($"DataPlaneTimeout and GroupFormationTimeout must be positive, got {options.DataPlaneTimeout} and {options.GroupFormationTimeout}.");
        }

        if (options.MaxFailovers < 0)
        {
            failures.Add($"MaxFailovers must be >= 0, got {options.MaxFailovers}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
