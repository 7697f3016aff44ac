using Microsoft.Extensions.Options;

namespace Granary.Grains;

/// <summary>How the coordinator waits for silos and how often it re-plans a generation before giving up.</summary>
public sealed class CoordinatorOptions
{
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

internal sealed class CoordinatorOptionsValidator : IValidateOptions<CoordinatorOptions>
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

        if (options.MaxFailovers < 0)
        {
            failures.Add($"MaxFailovers must be >= 0, got {options.MaxFailovers}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
