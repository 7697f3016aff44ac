using System.Text.Json;

namespace Granary.Models.Configuration;

/// <summary>Typed access to the fields of one JSON object, with errors that name the file and the field.</summary>
internal readonly struct JsonFields
{
    private readonly JsonElement _element;

    public JsonFields(JsonElement element, string path, string prefix = "")
    {
        _element = element;
        Path = path;
        Prefix = prefix;
    }

    public string Path { get; }

    public string Prefix { get; }

    public JsonElement Element => _element;

    public static JsonDocument ParseFile(string path)
    {
        if (!File.Exists(path))
        {
            throw new ModelLoadException(path, null, "File not found.");
        }

        try
        {
            var document = JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { AllowTrailingCommas = true });
            return document.RootElement.ValueKind == JsonValueKind.Object
                ? document
                : throw new ModelLoadException(path, null, $"Expected a JSON object, got {document.RootElement.ValueKind}.");
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(path, null, $"Not valid JSON: {e.Message}", e);
        }
    }

    public string Name(string field) => Prefix + field;

    public ModelLoadException Error(string field, string message) => new(Path, Name(field), message);

    /// <summary>The field's value; absent and JSON null both count as missing.</summary>
    public bool TryGet(string field, out JsonElement value) =>
        _element.TryGetProperty(field, out value) && value.ValueKind != JsonValueKind.Null;

    public bool Has(string field) => TryGet(field, out _);

    public JsonFields? Object(string field) =>
        !TryGet(field, out var value) ? null
        : value.ValueKind == JsonValueKind.Object ? new JsonFields(value, Path, Name(field) + ".")
        : throw Error(field, $"Expected an object, got {value.ValueKind}.");

    public string? String(string field) =>
        !TryGet(field, out var value) ? null
        : value.ValueKind == JsonValueKind.String ? value.GetString()
        : throw Error(field, $"Expected a string, got {value.GetRawText()}.");

    public int? Int(string field) =>
        !TryGet(field, out var value) ? null
        : value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var result) ? result
        : throw Error(field, $"Expected an integer, got {value.GetRawText()}.");

    public int RequiredInt(string field) => Int(field) ?? throw Error(field, "Required field is missing.");

    public int PositiveInt(string field, int? fallback = null)
    {
        var value = Int(field) ?? fallback ?? throw Error(field, "Required field is missing.");
        return value > 0 ? value : throw Error(field, $"Must be positive, got {value}.");
    }

    public double? Double(string field) =>
        !TryGet(field, out var value) ? null
        : value.ValueKind == JsonValueKind.Number ? value.GetDouble()
        : throw Error(field, $"Expected a number, got {value.GetRawText()}.");

    public bool? Bool(string field) =>
        !TryGet(field, out var value) ? null
        : value.ValueKind is JsonValueKind.True or JsonValueKind.False ? value.GetBoolean()
        : throw Error(field, $"Expected true or false, got {value.GetRawText()}.");

    /// <summary>An integer or a list of integers (as eos_token_id may be).</summary>
    public IReadOnlyList<int> IntOrIntList(string field)
    {
        if (!TryGet(field, out var value))
        {
            return [];
        }

        if (value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out var single))
        {
            return [single];
        }

        if (value.ValueKind == JsonValueKind.Array)
        {
            var list = new List<int>();
            foreach (var item in value.EnumerateArray())
            {
                list.Add(item.ValueKind == JsonValueKind.Number && item.TryGetInt32(out var id)
                    ? id
                    : throw Error(field, $"Expected integers, got {item.GetRawText()}."));
            }

            return list;
        }

        throw Error(field, $"Expected an integer or a list of integers, got {value.GetRawText()}.");
    }
}
