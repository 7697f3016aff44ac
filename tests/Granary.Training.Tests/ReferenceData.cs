using System.Runtime.InteropServices;
using System.Text.Json;
using Granary.Models;
using Granary.Models.Safetensors;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Training.Tests;

/// <summary>The transformers + peft numbers of tests/reference/training for one tiny model.</summary>
internal sealed class ReferenceData : IDisposable
{
    private readonly SafetensorsFile _tensors;

    private ReferenceData(string name, JsonElement summary, SafetensorsFile tensors)
    {
        Name = name;
        Summary = summary;
        _tensors = tensors;
    }

    public static string ModelsRoot => Path.Combine(AppContext.BaseDirectory, "reference", "models");

    public static string Root => Path.Combine(AppContext.BaseDirectory, "reference", "training");

    public string Name { get; }

    public JsonElement Summary { get; }

    public double Loss => Summary.GetProperty("loss").GetDouble();

    /// <summary>Whether make_training_reference.py has written this model's or variant's outputs.</summary>
    public static bool Exists(string name) =>
        File.Exists(Path.Combine(Root, name + ".json")) && File.Exists(Path.Combine(Root, name + ".safetensors"));

    public static ReferenceData Load(string name)
    {
        var summary = JsonDocument.Parse(File.ReadAllText(Path.Combine(Root, name + ".json"))).RootElement.Clone();
        return new ReferenceData(name, summary, SafetensorsFile.Open(Path.Combine(Root, name + ".safetensors")));
    }

    public static LoadedModel LoadModel(string name) => ModelLoader.Load(Path.Combine(ModelsRoot, name), new CpuBackend(2));

    /// <summary>The model of tests/reference/models this reference was made from (a variant names its base model).</summary>
    public LoadedModel LoadModel() => LoadModel(Summary.TryGetProperty("base_model", out var model) ? model.GetString()! : Name);

    public TokenBatch Batch()
    {
        var ids = Summary.GetProperty("input_ids").EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetInt32()).ToArray()).ToArray();
        var labels = Summary.GetProperty("labels").EnumerateArray().Select(r => r.EnumerateArray().Select(v => v.GetInt32()).ToArray()).ToArray();
        return new TokenBatch(ids.Length, ids[0].Length, [.. ids.SelectMany(r => r)], [.. labels.SelectMany(r => r)]);
    }

    public FineTuneOptions LoraOptions()
    {
        var lora = Summary.GetProperty("lora");
        return new FineTuneOptions
        {
            Type = lora.TryGetProperty("use_dora", out var dora) && dora.GetBoolean() ? FineTuneType.Dora : FineTuneType.Lora,
            Lora = new LoraOptions
            {
                Rank = lora.GetProperty("rank").GetInt32(),
                Scale = Training.LoraOptions.FromAlpha((float)lora.GetProperty("alpha").GetDouble(), lora.GetProperty("rank").GetInt32()),
                Keys = lora.TryGetProperty("granary_keys", out var keys)
                    ? [.. keys.EnumerateArray().Select(k => k.GetString()!)]
                    : [.. lora.GetProperty("target_modules").EnumerateArray().Select(k => KeyOf(k.GetString()!))],
            },
        };
    }

    public IReadOnlyList<string> Modules => [.. Summary.GetProperty("lora").GetProperty("modules").EnumerateArray().Select(m => m.GetString()!)];

    public bool Has(string name) => _tensors.Contains(name);

    public float[] Tensor(string name)
    {
        return MemoryMarshal.Cast<byte, float>(_tensors.GetBytes(name)).ToArray();
    }

    /// <summary>Sets every adapter to the reference's initial A and B (and DoRA magnitude).</summary>
    public void SetInitialAdapters(TrainingModel model)
    {
        var adapted = model.AdaptedLinears;
        Assert.Equal(Modules.Order(StringComparer.Ordinal), adapted.Keys.Order(StringComparer.Ordinal));
        foreach (var module in Modules)
        {
            foreach (var (parameter, part) in Parts(adapted[module].Lora!))
            {
                Tensor($"lora_init/{module}.{part}").CopyTo(parameter.Value, 0);
            }
        }
    }

    /// <summary>An adapter's trained tensors with the names the reference gives them.</summary>
    public static IEnumerable<(Parameter Parameter, string Part)> Parts(LoraAdapter lora)
    {
        yield return (lora.A, "lora_A");
        yield return (lora.B, "lora_B");
        if (lora.Magnitude is not null)
        {
            yield return (lora.Magnitude, "lora_magnitude");
        }
    }

    public void Dispose() => _tensors.Dispose();

    private static string KeyOf(string peftTarget) =>
        peftTarget is "q_proj" or "k_proj" or "v_proj" or "o_proj" ? "self_attn." + peftTarget : "mlp." + peftTarget;
}

internal static class Norms
{
    /// <summary>||actual - expected|| / ||expected||.</summary>
    public static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected)
    {
        Assert.Equal(expected.Length, actual.Length);
        double difference = 0, reference = 0;
        for (var i = 0; i < actual.Length; i++)
        {
            difference += Math.Pow(actual[i] - (double)expected[i], 2);
            reference += (double)expected[i] * expected[i];
        }

        return Math.Sqrt(difference / Math.Max(reference, 1e-300));
    }
}
