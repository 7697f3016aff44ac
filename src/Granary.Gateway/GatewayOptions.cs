using System.Net;
using Granary.Abstractions;
using Microsoft.Extensions.Options;

namespace Granary.Gateway;

/// <summary>Where the REST gateway listens, what it serves and what it accepts; bound from the "Granary:Gateway" section.</summary>
public sealed class GatewayOptions
{
    public const string SectionName = "Granary:Gateway";

    /// <summary>Address to listen on (an IP address or "localhost"). Default 127.0.0.1.</summary>
    public string Host { get; set; } = "127.0.0.1";

    /// <summary>HTTP port; 0 takes any free port. Default 8080.</summary>
    public int Port { get; set; } = 8080;

    /// <summary>Largest request body accepted, in bytes; larger ones get 413. Default 1 MiB.</summary>
    public long MaxRequestBodyBytes { get; set; } = 1024 * 1024;

    /// <summary>When set, every route except /health needs "Authorization: Bearer {ApiKey}". Default null (off).</summary>
    public string? ApiKey { get; set; }

    /// <summary>The model name used when a request names none, served as a model reference of its own unless <see cref="Models"/> maps it. Default "builtin".</summary>
    public string DefaultModel { get; set; } = "builtin";

    /// <summary>
    /// Served model names and the cluster model references behind them ("builtin", a folder under the silos' model
    /// directory, or an absolute path on the silos; "{model}@adapters={folder}" serves that model with the LoRA/DoRA
    /// adapters in the folder merged, see <see cref="ModelReferences"/>). Requests for other names get 404.
    /// </summary>
    public IDictionary<string, string> Models { get; set; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Prompts longer than this many tokens get 400 (context_length_exceeded). Default 8192.</summary>
    public int MaxPromptTokens { get; set; } = 8192;

    /// <summary>Tokens generated when a request gives no max_tokens. Default 256.</summary>
    public int DefaultMaxTokens { get; set; } = 256;

    /// <summary>The served names and their references: <see cref="Models"/> plus <see cref="DefaultModel"/> under its own name.</summary>
    public IReadOnlyDictionary<string, string> ServedModels()
    {
        var served = new Dictionary<string, string>(Models, StringComparer.Ordinal);
        served.TryAdd(DefaultModel, DefaultModel);
        return served;
    }

    internal void CopyTo(GatewayOptions target)
    {
        target.Host = Host;
        target.Port = Port;
        target.MaxRequestBodyBytes = MaxRequestBodyBytes;
        target.ApiKey = ApiKey;
        target.DefaultModel = DefaultModel;
        target.Models = new Dictionary<string, string>(Models, StringComparer.Ordinal);
        target.MaxPromptTokens = MaxPromptTokens;
        target.DefaultMaxTokens = DefaultMaxTokens;
    }
}

public sealed class GatewayOptionsValidator : IValidateOptions<GatewayOptions>
{
    public ValidateOptionsResult Validate(string? name, GatewayOptions options)
    {
        var failures = new List<string>();
        if (options.Host != "localhost" && !IPAddress.TryParse(options.Host, out _))
        {
            failures.Add($"Host '{options.Host}' is not an IP address or \"localhost\".");
        }

        if (options.Port is < 0 or > 65535)
        {
            failures.Add($"Port must be in 0..65535 (0 = any free port), got {options.Port}.");
        }

        if (options.MaxRequestBodyBytes < 1024)
        {
            failures.Add($"MaxRequestBodyBytes must be at least 1024, got {options.MaxRequestBodyBytes}.");
        }

        if (options.ApiKey is { } key && (key.Length == 0 || key.Any(char.IsWhiteSpace)))
        {
            failures.Add("ApiKey must be non-empty and without whitespace when set (leave it unset to turn keys off).");
        }

        if (string.IsNullOrWhiteSpace(options.DefaultModel))
        {
            failures.Add("DefaultModel must be set.");
        }

        foreach (var (served, reference) in options.Models)
        {
            if (string.IsNullOrWhiteSpace(served) || string.IsNullOrWhiteSpace(reference))
            {
                failures.Add($"Models entry '{served}' = '{reference}' needs both a name and a model reference.");
                continue;
            }

            try
            {
                ModelReferences.Parse(reference);
            }
            catch (ArgumentException e)
            {
                failures.Add($"Models entry '{served}': {e.Message}");
            }
        }

        if (options.MaxPromptTokens < 1)
        {
            failures.Add($"MaxPromptTokens must be at least 1, got {options.MaxPromptTokens}.");
        }

        if (options.DefaultMaxTokens < 1)
        {
            failures.Add($"DefaultMaxTokens must be at least 1, got {options.DefaultMaxTokens}.");
        }

        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
