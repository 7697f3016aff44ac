using System.Net;
using Granary.Grains;
using Microsoft.Extensions.Options;

namespace Granary.Silo;

/// <summary>Everything that makes a silo one member of one Granary cluster; bound from the "Granary" section.</summary>
public sealed class GranarySiloOptions
{
    public const string SectionName = "Granary";

    /// <summary>Silos (and clients) with the same cluster id form one cluster. Default "granary".</summary>
    public string ClusterId { get; set; } = "granary";

    /// <summary>Stays the same across redeployments of the cluster. Default "granary".</summary>
    public string ServiceId { get; set; } = "granary";

    /// <summary>Unique in the cluster; shards are pinned to silos by this name. Default "{machine}-{silo port}".</summary>
    public string SiloName { get; set; } = "";

    /// <summary>Silo-to-silo port. Default 11111.</summary>
    public int SiloPort { get; set; } = 11111;

    /// <summary>Port clients connect to. Default 30000.</summary>
    public int GatewayPort { get; set; } = 30000;

    /// <summary>The address other silos and clients use to reach this one; empty: loopback for "localhost" membership, the host's address otherwise.</summary>
    public string AdvertisedAddress { get; set; } = "";

    /// <summary>Relative model references resolve under this folder; empty: the Granary cache's models folder.</summary>
    public string ModelDirectory { get; set; } = "";

    /// <summary>Compute backend: "cpu", "cuda" or "metal". Default "cpu".</summary>
    public string Backend { get; set; } = "cpu";

    /// <summary>CPU worker threads; null uses every processor.</summary>
    public int? Threads { get; set; }

    /// <summary>At most this many bytes are offered to models; null offers what the backend reports.</summary>
    public long? MemoryLimitBytes { get; set; }

    public MembershipSettings Membership { get; set; } = new();

    /// <summary>
    /// When set, the silo stops once this process is gone: a launcher (`granary demo`) that dies, even by SIGKILL,
    /// leaves no silo behind.
    /// </summary>
    public int? ParentProcessId { get; set; }

    /// <summary>How this silo's coordinators lay models out and fail over (layout preference, shard count, data-plane timeouts).</summary>
    public CoordinatorOptions Coordinator { get; set; } = new();

    public string EffectiveSiloName => SiloName.Length > 0 ? SiloName : $"{Environment.MachineName}-{SiloPort}";
}

/// <summary>How silos find each other.</summary>
public sealed class MembershipSettings
{
    public const string Localhost = "localhost";
    public const string Postgres = "postgres";

    /// <summary>
    /// "localhost" (default): development clustering, zero setup; every silo names the same primary silo.
    /// "postgres": Orleans' ADO.NET membership table in PostgreSQL (run `granary db init` once).
    /// </summary>
    public string Provider { get; set; } = Localhost;

    /// <summary>For "localhost": the silo endpoint (address:port) of the silo the others join. Default 127.0.0.1:11111.</summary>
    public string PrimarySiloEndpoint { get; set; } = "127.0.0.1:11111";

    /// <summary>For "postgres": an Npgsql connection string.</summary>
    public string ConnectionString { get; set; } = "";
}

internal sealed class GranarySiloOptionsValidator : IValidateOptions<GranarySiloOptions>
{
    public ValidateOptionsResult Validate(string? name, GranarySiloOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ClusterId))
        {
            failures.Add("ClusterId must be set.");
        }

        if (string.IsNullOrWhiteSpace(options.ServiceId))
        {
            failures.Add("ServiceId must be set.");
        }

        if (options.EffectiveSiloName.Contains('/') || string.IsNullOrWhiteSpace(options.EffectiveSiloName))
        {
            failures.Add($"SiloName '{options.EffectiveSiloName}' must be non-empty and must not contain '/'.");
        }

        foreach (var (port, label) in new[] { (options.SiloPort, "SiloPort"), (options.GatewayPort, "GatewayPort") })
        {
            if (port is < 1 or > 65535)
            {
                failures.Add($"{label} must be in 1..65535, got {port}.");
            }
        }

        if (options.SiloPort == options.GatewayPort)
        {
            failures.Add($"SiloPort and GatewayPort must differ (both {options.SiloPort}).");
        }

        if (options.AdvertisedAddress.Length > 0 && !IPAddress.TryParse(options.AdvertisedAddress, out _))
        {
            failures.Add($"AdvertisedAddress '{options.AdvertisedAddress}' is not an IP address.");
        }

        switch (options.Membership.Provider)
        {
            case MembershipSettings.Localhost:
                if (!IPEndPoint.TryParse(options.Membership.PrimarySiloEndpoint, out var primary) || primary.Port == 0)
                {
                    failures.Add($"Membership:PrimarySiloEndpoint '{options.Membership.PrimarySiloEndpoint}' is not an address:port.");
                }

                break;
            case MembershipSettings.Postgres:
                if (string.IsNullOrWhiteSpace(options.Membership.ConnectionString))
                {
                    failures.Add("Membership:ConnectionString must be set for the \"postgres\" provider.");
                }

                break;
            default:
                failures.Add($"Membership:Provider must be \"{MembershipSettings.Localhost}\" or \"{MembershipSettings.Postgres}\", got \"{options.Membership.Provider}\".");
                break;
        }

        if (options.Threads is < 1)
        {
            failures.Add($"Threads must be at least 1, got {options.Threads}.");
        }

        if (new CoordinatorOptionsValidator().Validate(name, options.Coordinator) is { Failed: true } coordinator)
        {
            failures.AddRange(coordinator.Failures.Select(failure => $"Coordinator: {failure}"));
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
