using System.Text;
using System.Text.Json;

namespace Granary.Collectives;

/// <summary>
/// One host of an MLX hostfile: the name ssh reaches it by, its IP addresses (the first is used for collectives),
/// and optionally per-peer RDMA device names (null for itself).
/// </summary>
public sealed record HostEntry(string Ssh, IReadOnlyList<string> Ips, IReadOnlyList<string?>? Rdma = null);

/// <summary>
/// The MLX hostfile: a JSON list of <c>{"ssh": "...", "ips": ["..."], "rdma": [null, "rdma_en5", ...]}</c>, one entry per rank.
/// </summary>
public static class Hostfile
{
    public static IReadOnlyList<HostEntry> Load(string path)
    {
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new FormatException($"Cannot read hostfile '{path}': {e.Message}", e);
        }

        return Parse(text, path);
    }

    /// <summary>Parses hostfile JSON; errors name the source, the line, and the offending host and field.</summary>
    public static IReadOnlyList<HostEntry> Parse(string json, string source = "hostfile")
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow });
        }
        catch (JsonException e)
        {
            throw new FormatException($"{source}: invalid JSON at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}: {e.Message}", e);
        }

        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Array)
            {
                throw new FormatException($"{source}: expected a JSON list of hosts, got {root.ValueKind}.");
            }

            var hosts = new List<HostEntry>();
            var index = 0;
            foreach (var element in root.EnumerateArray())
            {
                hosts.Add(ParseHost(element, $"{source}: host {index}"));
                index++;
            }

            if (hosts.Count == 0)
            {
                throw new FormatException($"{source}: the list of hosts is empty.");
            }

            for (var i = 0; i < hosts.Count; i++)
            {
                if (hosts[i].Rdma is { } rdma && rdma.Count != hosts.Count)
                {
                    throw new FormatException($"{source}: host {i} (\"{hosts[i].Ssh}\") field \"rdma\" has {rdma.Count} entries, expected one per host ({hosts.Count}).");
                }
            }

            return hosts;
        }
    }

    private static HostEntry ParseHost(JsonElement element, string where)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new FormatException($"{where}: expected an object with \"ssh\" and \"ips\", got {element.ValueKind}.");
        }

        string? ssh = null;
        List<string>? ips = null;
        List<string?>? rdma = null;
        foreach (var property in element.EnumerateObject())
        {
            switch (property.Name)
            {
                case "ssh":
                    ssh = property.Value.ValueKind == JsonValueKind.String && property.Value.GetString() is { Length: > 0 } name
                        ? name
                        : throw new FormatException($"{where}: field \"ssh\" must be a non-empty string.");
                    break;
                case "ips":
                    ips = ReadStrings(property.Value, $"{where}: field \"ips\"", allowNull: false)!;
                    foreach (var ip in ips)
                    {
                        if (!System.Net.IPAddress.TryParse(ip, out _))
                        {
                            throw new FormatException($"{where}: field \"ips\" holds \"{ip}\", which is not an IP address.");
                        }
                    }

                    break;
                case "rdma":
                    rdma = property.Value.ValueKind == JsonValueKind.Null ? null : ReadStrings(property.Value, $"{where}: field \"rdma\"", allowNull: true);
                    break;
                default:
                    throw new FormatException($"{where}: unknown field \"{property.Name}\" (expected \"ssh\", \"ips\", \"rdma\").");
            }
        }

        if (ssh is null)
        {
            throw new FormatException($"{where}: missing field \"ssh\".");
        }

        return new HostEntry(ssh, ips ?? [], rdma);
    }

    private static List<string?> ReadStrings(JsonElement value, string what, bool allowNull)
    {
        if (value.ValueKind != JsonValueKind.Array)
        {
            throw new FormatException($"{what} must be a list, got {value.ValueKind}.");
        }

        var list = new List<string?>();
        foreach (var item in value.EnumerateArray())
        {
            list.Add(item.ValueKind switch
            {
                JsonValueKind.String => item.GetString(),
                JsonValueKind.Null when allowNull => null,
                _ => throw new FormatException($"{what} must hold strings{(allowNull ? " or null" : "")}, found {item.ValueKind}."),
            });
        }

        return list;
    }

    /// <summary>The hostfile JSON for <paramref name="hosts"/>, one host per line as MLX writes it.</summary>
    public static string Format(IReadOnlyList<HostEntry> hosts)
    {
        var builder = new StringBuilder("[\n");
        for (var i = 0; i < hosts.Count; i++)
        {
            var host = hosts[i];
            builder.Append("  {\"ssh\": ").Append(JsonSerializer.Serialize(host.Ssh))
                .Append(", \"ips\": [").AppendJoin(", ", host.Ips.Select(ip => JsonSerializer.Serialize(ip))).Append(']');
            if (host.Rdma is { } rdma)
            {
                builder.Append(", \"rdma\": [").AppendJoin(", ", rdma.Select(d => d is null ? "null" : JsonSerializer.Serialize(d))).Append(']');
            }

            builder.Append('}').Append(i + 1 < hosts.Count ? ",\n" : "\n");
        }

        return builder.Append("]\n").ToString();
    }

    public static void Save(string path, IReadOnlyList<HostEntry> hosts) => File.WriteAllText(path, Format(hosts));
}
