using System.Globalization;

namespace Granary.Cli;

/// <summary>
/// Reads `--name value` options, `--flag` switches and a trailing `-- rest...` from a command's arguments.
/// Every option must be declared; unknown ones are usage errors, so typos never pass silently.
/// </summary>
internal sealed class CommandArguments
{
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    private CommandArguments(string[] rest) => Rest = rest;

    /// <summary>Everything after a bare "--".</summary>
    public string[] Rest { get; }

    /// <param name="valueOptions">Options that take a value (may repeat).</param>
    /// <param name="flagOptions">Options that take none.</param>
    public static CommandArguments Parse(string[] args, IReadOnlyCollection<string> valueOptions, IReadOnlyCollection<string> flagOptions)
    {
        var separator = Array.IndexOf(args, "--");
        var own = separator < 0 ? args : args[..separator];
        var parsed = new CommandArguments(separator < 0 ? [] : args[(separator + 1)..]);
        for (var i = 0; i < own.Length; i++)
        {
            var arg = own[i];
            string name;
            string? inlineValue = null;
            var equals = arg.IndexOf('=', StringComparison.Ordinal);
            if (arg.StartsWith("--", StringComparison.Ordinal) && equals > 0)
            {
                name = arg[..equals];
                inlineValue = arg[(equals + 1)..];
            }
            else
            {
                name = arg;
            }

            if (flagOptions.Contains(name) && inlineValue is null)
            {
                parsed._flags.Add(name);
            }
            else if (valueOptions.Contains(name))
            {
                var value = inlineValue ?? (i + 1 < own.Length ? own[++i] : throw new UsageException($"{name} needs a value."));
                if (!parsed._values.TryGetValue(name, out var list))
                {
                    parsed._values[name] = list = [];
                }

                list.Add(value);
            }
            else
            {
                throw new UsageException($"unknown option '{arg}'.");
            }
        }

        return parsed;
    }

    public bool Has(string flag) => _flags.Contains(flag);

    public string? Get(string name) => _values.TryGetValue(name, out var list) ? list[^1] : null;

    public IReadOnlyList<string> GetAll(string name) => _values.TryGetValue(name, out var list) ? list : [];

    public int GetInt(string name, int fallback) =>
        Get(name) is { } text
            ? int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
                ? value
                : throw new UsageException($"{name} must be an integer, got '{text}'.")
            : fallback;

    public int? GetIntOrNull(string name) => Get(name) is null ? null : GetInt(name, 0);

    public float GetFloat(string name, float fallback) =>
        Get(name) is { } text
            ? float.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var value)
                ? value
                : throw new UsageException($"{name} must be a number, got '{text}'.")
            : fallback;

    /// <summary>A comma-separated list of integers, e.g. "--prompt-ids 1,2,3".</summary>
    public int[]? GetIntList(string name)
    {
        if (Get(name) is not { } text)
        {
            return null;
        }

        var parts = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var values = new int[parts.Length];
        for (var i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out values[i]))
            {
                throw new UsageException($"{name} must be comma-separated integers, got '{parts[i]}'.");
            }
        }

        return values;
    }
}
