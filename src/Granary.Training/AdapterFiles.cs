using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Granary.Models.Safetensors;

namespace Granary.Training;

/// <summary>
/// Adapters on disk, as mlx_lm writes them: adapters.safetensors with "{module}.lora_a" [in, rank] and
/// "{module}.lora_b" [rank, out] (DoRA adds "{module}.m" [out]; full fine-tuning: every trained weight under its Hugging
/// Face name) and adapter_config.json with fine_tune_type, num_layers and lora_parameters {rank, scale, dropout, keys}.
/// </summary>
public static class AdapterFiles
{
    public const string WeightsFileName = "adapters.safetensors";
    public const string ConfigFileName = "adapter_config.json";

    public static void Save(TrainingModel model, string directory, string? modelPath = null)
    {
        Directory.CreateDirectory(directory);
        var writer = new SafetensorsWriter();
        foreach (var parameter in model.TrainableParameters)
        {
            if (parameter.Shape.Length == 2 && IsAdapter(parameter.Name))
            {
                writer.Add(parameter.Name, Transpose(parameter.Value, parameter.Shape[0], parameter.Shape[1]), parameter.Shape[1], parameter.Shape[0]);
            }
            else
            {
                writer.Add(parameter.Name, parameter.Value, parameter.Shape);
            }
        }

        WriteAtomically(Path.Combine(directory, WeightsFileName), writer.Save);
        var options = model.Options;
        var config = new JsonObject
        {
            ["fine_tune_type"] = options.Type switch { FineTuneType.Full => "full", FineTuneType.Dora => "dora", _ => "lora" },
            ["num_layers"] = options.Lora.LayerCount < 0 ? model.Layers.Count : options.Lora.LayerCount,
            ["lora_parameters"] = new JsonObject
            {
                ["rank"] = options.Lora.Rank,
                ["scale"] = options.Lora.Scale,
                ["dropout"] = options.Lora.Dropout,
                ["keys"] = new JsonArray([.. options.Lora.Keys.Select(k => JsonValue.Create(k))]),
            },
        };
        if (modelPath is not null)
        {
            config["model"] = modelPath;
        }

        WriteAtomically(Path.Combine(directory, ConfigFileName), s => JsonSerializer.Serialize(s, config, new JsonSerializerOptions { WriteIndented = true }));
    }

    /// <summary>Reads adapter_config.json into options for <see cref="TrainingModel.Create"/>.</summary>
    public static FineTuneOptions ReadOptions(string directory)
    {
        var path = Path.Combine(directory, ConfigFileName);
        try
        {
            var root = JsonNode.Parse(File.ReadAllText(path))!.AsObject();
            var lora = root["lora_parameters"]!.AsObject();
            var options = new FineTuneOptions
            {
                Type = (string?)root["fine_tune_type"] switch
                {
                    "full" => FineTuneType.Full,
                    "dora" => FineTuneType.Dora,
                    null or "lora" => FineTuneType.Lora,
                    var other => throw new FormatException($"fine_tune_type '{other}' is not lora, dora or full"),
                },
                Lora = new LoraOptions
                {
                    Rank = (int)lora["rank"]!,
                    Scale = (float)lora["scale"]!,
                    Dropout = (float?)lora["dropout"] ?? 0,
                    Keys = lora["keys"] is JsonArray keys ? [.. keys.Select(k => (string)k!)] : LoraOptions.DefaultKeys,
                    LayerCount = (int?)root["num_layers"] ?? -1,
                },
            };
            options.Validate();
            return options;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NullReferenceException or FormatException or ArgumentException)
        {
            throw new InvalidDataException($"{path}: not a valid adapter config ({e.Message}).", e);
        }
    }

    /// <summary>Sets the model's trained parameters (adapters, or all weights) from adapters.safetensors.</summary>
    public static void Load(TrainingModel model, string directory)
    {
        var path = Path.Combine(directory, WeightsFileName);
        using var file = SafetensorsFile.Open(path);
        foreach (var parameter in model.TrainableParameters)
        {
            if (!file.Contains(parameter.Name))
            {
                throw new InvalidDataException($"{path}: no tensor '{parameter.Name}'.");
            }

            var values = MemoryMarshal.Cast<byte, float>(file.GetBytes(parameter.Name));
            if (values.Length != parameter.Value.Length)
            {
                throw new InvalidDataException($"{path}: '{parameter.Name}' has {values.Length} values; the model needs {parameter.Value.Length}.");
            }

            if (parameter.Shape.Length == 2 && IsAdapter(parameter.Name))
            {
                Transpose(values.ToArray(), parameter.Shape[1], parameter.Shape[0]).CopyTo(parameter.Value, 0);
            }
            else
            {
                values.CopyTo(parameter.Value);
            }
        }
    }

    internal static bool IsAdapter(string name) => name.EndsWith(".lora_a", StringComparison.Ordinal) || name.EndsWith(".lora_b", StringComparison.Ordinal);

    internal static float[] Transpose(float[] values, int rows, int columns)
    {
        var result = new float[values.Length];
        for (var r = 0; r < rows; r++)
        {
            for (var c = 0; c < columns; c++)
            {
                result[(c * rows) + r] = values[(r * columns) + c];
            }
        }

        return result;
    }

    // A checkpoint is never left half-written: write beside it, then rename over it.
    internal static void WriteAtomically(string path, Action<Stream> write)
    {
        var temporary = path + ".tmp";
        using (var stream = File.Create(temporary))
        {
            write(stream);
        }

        File.Move(temporary, path, overwrite: true);
    }
}
