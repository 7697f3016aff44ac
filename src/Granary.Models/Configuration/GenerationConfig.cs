
namespace Granary.Models.Configuration;

/// <summary>Decoding defaults from generation_config.json, with the transformers defaults where a field is absent.</summary>
public sealed class GenerationConfig
{
    public const string FileName = "generation_config.json";

    public int? BosTokenId { get; init; }

    /// <summary>Ids that end generation (eos_token_id may be one id or a list).</summary>
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];

    public int? PadTokenId { get; init; }

    public bool DoSample { get; init; }

    public float Temperature { get; init; } = 1.0f;

    public float TopP { get; init; } = 1.0f;

    /// <summary>0 disables top-k.</summary>
    public int TopK { get; init; } = 50;

    /// <summary>0 disables min-p.</summary>
    public float MinP { get; init; }

    public float RepetitionPenalty { get; init; } = 1.0f;

    public int? MaxNewTokens { get; init; }

    public int? MaxLength { get; init; }

    /// <summary>Reads generation_config.json from <paramref name="modelDirectory"/>; without it, takes bos/eos from the model config.</summary>
    public static GenerationConfig Load(string modelDirectory, ModelConfig model)
    {
        var path = Path.Combine(Path.GetFullPath(modelDirectory), FileName);
        if (!File.Exists(path))
        {
            return new GenerationConfig { BosTokenId = model.BosTokenId, EosTokenIds = model.EosTokenIds };
        }

        using var document = JsonFields.ParseFile(path);
        var json = new JsonFields(document.RootElement, path);
        var eos = json.IntOrIntList("eos_token_id");
        var config = new GenerationConfig
        {
            BosTokenId = json.Int("bos_token_id") ?? model.BosTokenId,
            EosTokenIds = eos.Count > 0 ? eos : model.EosTokenIds,
            PadTokenId = json.Int("pad_token_id"),
            DoSample = json.Bool("do_sample") ?? false,
            Temperature = (float)(json.Double("temperature") ?? 1.0),
            TopP = (float)(json.Double("top_p") ?? 1.0),
            TopK = json.Int("top_k") ?? 50,
            MinP = (float)(json.Double("min_p") ?? 0.0),
            RepetitionPenalty = (float)(json.Double("repetition_penalty") ?? 1.0),
            MaxNewTokens = json.Int("max_new_tokens"),
            MaxLength = json.Int("max_length"),
        };
        config.Validate(path);
        return config;
    }

    private void Validate(string path)
    {
        if (Temperature < 0)
        {
            throw new ModelLoadException(path, "temperature", $"Must not be negative, got {Temperature}.");
        }

        if (TopP is <= 0 or > 1)
        {
            throw new ModelLoadException(path, "top_p", $"Must be in (0, 1], got {TopP}.");
        }

        if (TopK < 0)
        {
            throw new ModelLoadException(path, "top_k", $"Must not be negative, got {TopK}.");
        }

        if (MinP is < 0 or > 1)
        {
            throw new ModelLoadException(path, "min_p", $"Must be in [0, 1], got {MinP}.");
        }

        if (RepetitionPenalty <= 0)
        {
            throw new ModelLoadException(path, "repetition_penalty", $"Must be positive, got {RepetitionPenalty}.");
        }
    }
}
