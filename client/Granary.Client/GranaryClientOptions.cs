using System.Net;
using Microsoft.Extensions.Options;

namespace Granary.Client;

/// <summary>Which cluster to reach and how to find its gateways.</summary>
public sealed class GranaryClientOptions
{
    public const string Localhost = "localhost";
    public const string Postgres = "postgres";

    /// <summary>Must match the silos'. Default "granary".</summary>
    public string ClusterId { get; set; } = "granary";

    /// <summary>Must match the silos'. Default "granary".</summary>
    public string ServiceId { get; set; } = "granary";

    /// <summary>"localhost" (default): the gateways listed in <see cref="Gateways"/>; "postgres": the gateways in the membership table.</summary>
    public string Membership { get; set; } = Localhost;

    /// <summary>For "localhost": gateway endpoints (address:port). Default 127.0.0.1:30000.</summary>
    public IList<string> Gateways { get; set; } = ["127.0.0.1:30000"];

    /// <summary>For "postgres": an Npgsql connection string.</summary>
    public string ConnectionString { get; set; } = "";

    /// <summary>How long connecting may take before it fails. Default 15 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(15);
}

internal sealed class GranaryClientOptionsValidator : IValidateOptions<GranaryClientOptions>
{
    public ValidateOptionsResult Validate(string? name, GranaryClientOptions options)
    {
        var failures = new List<string>();
        if (string.IsNullOrWhiteSpace(options.ClusterId) || string.IsNullOrWhiteSpace(options.ServiceId))
        {
            failures.Add("ClusterId and ServiceId must be set.");
        }

        switch (options.Membership)
        {
            case GranaryClientOptions.Localhost:
                if (options.Gateways.Count == 0)
                {
                    failures.Add("At least one gateway endpoint is needed for \"localhost\" membership.");
                }

                failures.AddRange(options.Gateways
                    .Where(gateway => !IPEndPoint.TryParse(gateway, out var endpoint) || endpoint.Port == 0)
                    .Select(gateway => $"Gateway '{gateway}' is not an address:port."));
                break;
            case GranaryClientOptions.Postgres:
                if (string.IsNullOrWhiteSpace(options.ConnectionString))
                {
                    failures.Add("A connection string is needed for \"postgres\" membership.");
                }

                break;
            default:
                failures.Add($"Membership must be \"{GranaryClientOptions.Localhost}\" or \"{GranaryClientOptions.Postgres}\", got \"{options.Membership}\".");
                break;
        }

        if (options.ConnectTimeout <= TimeSpan.Zero)
        {
            failures.Add($"ConnectTimeout must be positive, got {options.ConnectTimeout}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
