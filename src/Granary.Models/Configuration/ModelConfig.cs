using System.Text.Json;
using Granary.Tensors;

namespace Granary.Models.Configuration;

/// <summary>
/// The decoder-only transformer described by a Hugging Face config.json (model_type llama, qwen2, qwen3, qwen3_moe),
/// with the per-family defaults transformers applies, validated so the model can be built without further checks.
/// </summary>
public sealed class ModelConfig
{
    public const string FileName = "config.json";

    private static readonly Dictionary<string, string> ModelTypeOfArchitecture = new(StringComparer.Ordinal)
    {
        ["LlamaForCausalLM"] = "llama",
        ["Qwen2ForCausalLM"] = "qwen2",
        ["Qwen3ForCausalLM"] = "qwen3",
        ["Qwen3MoeForCausalLM"] = "qwen3_moe",
    };

    private ModelConfig()
    {
    }

    /// <summary>"llama", "qwen2", "qwen3" or "qwen3_moe".</summary>
    public string ModelType { get; private init; } = "";

    /// <summary>architectures[0], when given.</summary>
    public string? Architecture { get; private init; }

    public int VocabularySize { get; private init; }

    public int HiddenSize { get; private init; }

    /// <summary>Width of the dense MLP.</summary>
    public int IntermediateSize { get; private init; }

    public int LayerCount { get; private init; }

    public int AttentionHeadCount { get; private init; }

    public int KeyValueHeadCount { get; private init; }

    public int HeadDim { get; private init; }

    public float RmsNormEpsilon { get; private init; }

    public int MaxPositionEmbeddings { get; private init; }

    /// <summary>lm_head shares the embedding table.</summary>
    public bool TieWordEmbeddings { get; private init; }

    /// <summary>q_proj, k_proj and v_proj have a bias (always for qwen2, "attention_bias" otherwise).</summary>
    public bool QueryKeyValueBias { get; private init; }

    /// <summary>o_proj has a bias ("attention_bias" for llama and qwen3; never for qwen2).</summary>
    public bool OutputProjectionBias { get; private init; }

    /// <summary>gate_proj, up_proj and down_proj have a bias ("mlp_bias", llama only).</summary>
    public bool MlpBias { get; private init; }

    /// <summary>Per-head RMS norm of queries and keys before rotary embedding (qwen3, qwen3_moe).</summary>
    public bool QueryKeyNorm { get; private init; }

    public RopeConfig Rope { get; private init; } = null!;

    /// <summary>Set for qwen3_moe.</summary>
    public MixtureOfExpertsConfig? MixtureOfExperts { get; private init; }

    /// <summary>MLX affine quantization of the checkpoint, when it is quantized.</summary>
    public QuantizationConfig? Quantization { get; private init; }

    /// <summary>The checkpoint's declared dtype ("torch_dtype" or "dtype"), when given.</summary>
    public DType? DType { get; private init; }

    public int? BosTokenId { get; private init; }

    public IReadOnlyList<int> EosTokenIds { get; private init; } = [];

    public static ModelConfig Load(string path)
    {
        path = Path.GetFullPath(path);
        using var document = JsonFields.ParseFile(path);
        return Parse(new JsonFields(document.RootElement, path));
    }

    /// <summary>Parses config JSON text; <paramref name="sourceName"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string sourceName = FileName)
    {
        try
        {
            using var document = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true });
            return document.RootElement.ValueKind == JsonValueKind.Object
                ? Parse(new JsonFields(document.RootElement, sourceName))
                : throw new ModelLoadException(sourceName, null, "Expected a JSON object.");
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(sourceName, null, $"Not valid JSON: {e.Message}", e);
        }
    }

    private static ModelConfig Parse(JsonFields json)
    {
        var architecture = ReadArchitecture(json);
        var modelType = json.String("model_type")
            ?? (architecture is not null && ModelTypeOfArchitecture.TryGetValue(architecture, out var mapped) ? mapped : null)
            ?? throw json.Error("model_type", $"Missing, and architectures[0] '{architecture}' is not one of {string.Join(", ", ModelTypeOfArchitecture.Keys)}.");
        if (!ModelTypeOfArchitecture.ContainsValue(modelType))
        {
            throw json.Error("model_type", $"Unsupported model type '{modelType}'; supported: {string.Join(", ", ModelTypeOfArchitecture.Values)}.");
        }

        var activation = json.String("hidden_act") ?? "silu";
        if (activation != "silu")
        {
            throw json.Error("hidden_act", $"Only 'silu' is supported, got '{activation}'.");
        }

        if (json.Bool("use_sliding_window") == true)
        {
            throw json.Error("use_sliding_window", "Sliding-window attention is not supported.");
        }

        if (json.TryGet("layer_types", out var layerTypes))
        {
            if (layerTypes.ValueKind != JsonValueKind.Array
                || layerTypes.EnumerateArray().Any(t => t.ValueKind != JsonValueKind.String || t.GetString() != "full_attention"))
            {
                throw json.Error("layer_types", $"Only 'full_attention' layers are supported, got {layerTypes.GetRawText()}.");
            }
        }

        var hidden = json.PositiveInt("hidden_size");
        var heads = json.PositiveInt("num_attention_heads");
        var kvHeads = json.PositiveInt("num_key_value_heads", heads);
        if (heads % kvHeads != 0)
        {
            throw json.Error("num_key_value_heads", $"{kvHeads} does not divide num_attention_heads {heads}.");
        }

        if (!json.Has("head_dim") && hidden % heads != 0)
        {
            throw json.Error("num_attention_heads", $"{heads} does not divide hidden_size {hidden} and head_dim is not given.");
        }

        var headDim = json.PositiveInt("head_dim", hidden / heads);
        if (headDim % 2 != 0)
        {
            throw json.Error("head_dim", $"Rotary embedding needs an even head dimension, got {headDim}.");
        }

        var epsilon = json.Double("rms_norm_eps") ?? 1e-6;
        if (!(epsilon > 0))
        {
            throw json.Error("rms_norm_eps", $"Must be positive, got {epsilon}.");
        }

        var attentionBias = json.Bool("attention_bias") ?? false;
        var isQwen3 = modelType is "qwen3" or "qwen3_moe";
        var eos = json.IntOrIntList("eos_token_id");
        return new ModelConfig
        {
            ModelType = modelType,
            Architecture = architecture,
            VocabularySize = json.PositiveInt("vocab_size"),
            HiddenSize = hidden,
            IntermediateSize = json.PositiveInt("intermediate_size"),
            LayerCount = json.PositiveInt("num_hidden_layers"),
            AttentionHeadCount = heads,
            KeyValueHeadCount = kvHeads,
            HeadDim = headDim,
            RmsNormEpsilon = (float)epsilon,
            MaxPositionEmbeddings = json.PositiveInt("max_position_embeddings", 2048),
            TieWordEmbeddings = json.Bool("tie_word_embeddings") ?? false,
            QueryKeyValueBias = modelType == "qwen2" || attentionBias,
            OutputProjectionBias = modelType != "qwen2" && attentionBias,
            MlpBias = modelType == "llama" && (json.Bool("mlp_bias") ?? false),
            QueryKeyNorm = isQwen3,
            Rope = ReadRope(json),
            MixtureOfExperts = modelType == "qwen3_moe" ? ReadMixtureOfExperts(json) : null,
            Quantization = ReadQuantization(json),
            DType = ReadDType(json),
            BosTokenId = json.Int("bos_token_id"),
            EosTokenIds = eos,
        };
    }

    private static string? ReadArchitecture(JsonFields json)
    {
        if (!json.TryGet("architectures", out var architectures))
        {
            return null;
        }

        if (architectures.ValueKind != JsonValueKind.Array)
        {
            throw json.Error("architectures", "Expected a list of strings.");
        }

        return architectures.GetArrayLength() == 0 ? null
            : architectures[0].ValueKind == JsonValueKind.String ? architectures[0].GetString()
            : throw json.Error("architectures", "Expected a list of strings.");
    }

    private static RopeConfig ReadRope(JsonFields json)
    {
        // Newer transformers write everything under "rope_parameters"; older configs split theta and scaling.
        var parameters = json.Object("rope_parameters") ?? json.Object("rope_scaling");
        var theta = parameters?.Double("rope_theta") ?? json.Double("rope_theta") ?? 10000.0;
        if (!(theta > 0))
        {
            throw (parameters?.Has("rope_theta") == true ? parameters.Value : json).Error("rope_theta", $"Must be positive, got {theta}.");
        }

        if (parameters is not { } p)
        {
            return new RopeConfig(RopeConfig.DefaultType, theta);
        }

        var typeField = p.Has("rope_type") ? "rope_type" : "type";
        var type = p.String(typeField) ?? RopeConfig.DefaultType;
        var partial = p.Double("partial_rotary_factor") ?? json.Double("partial_rotary_factor") ?? 1.0;
        if (partial != 1.0)
        {
            throw p.Error("partial_rotary_factor", $"Partial rotary embedding is not supported, got {partial}.");
        }

        switch (type)
        {
            case RopeConfig.DefaultType:
                return new RopeConfig(type, theta);
            case RopeConfig.LinearType:
                return new RopeConfig(type, theta, factor: Positive(p, "factor"));
            case RopeConfig.Llama3Type:
                var low = Positive(p, "low_freq_factor");
                var high = Positive(p, "high_freq_factor");
                if (!(high > low))
                {
                    throw p.Error("high_freq_factor", $"Must exceed low_freq_factor {low}, got {high}.");
                }

                return new RopeConfig(type, theta, Positive(p, "factor"), low, high, p.PositiveInt("original_max_position_embeddings"));
            default:
                throw p.Error(typeField, $"Unsupported rope type '{type}'; supported: default, linear, llama3.");
        }
    }

    private static double Positive(JsonFields json, string field)
    {
        var value = json.Double(field) ?? throw json.Error(field, "Required field is missing.");
        return value > 0 ? value : throw json.Error(field, $"Must be positive, got {value}.");
    }

    private static MixtureOfExpertsConfig ReadMixtureOfExperts(JsonFields json)
    {
        var expertsField = json.Has("num_experts") ? "num_experts" : "num_local_experts";
        var experts = json.PositiveInt(expertsField);
        var perToken = json.PositiveInt("num_experts_per_tok");
        if (perToken > experts)
        {
            throw json.Error("num_experts_per_tok", $"{perToken} exceeds {expertsField} {experts}.");
        }

        if (json.Int("shared_expert_intermediate_size") is > 0)
        {
            throw json.Error("shared_expert_intermediate_size", "Shared experts are not supported.");
        }

        var onlyDense = new HashSet<int>();
        if (json.TryGet("mlp_only_layers", out var layers))
        {
            if (layers.ValueKind != JsonValueKind.Array)
            {
                throw json.Error("mlp_only_layers", "Expected a list of layer indices.");
            }

            foreach (var layer in layers.EnumerateArray())
            {
                onlyDense.Add(layer.ValueKind == JsonValueKind.Number && layer.TryGetInt32(out var index) && index >= 0
                    ? index
                    : throw json.Error("mlp_only_layers", $"Expected layer indices, got {layer.GetRawText()}."));
            }
        }

        return new MixtureOfExpertsConfig(
            experts,
            perToken,
            json.PositiveInt("moe_intermediate_size"),
            json.Bool("norm_topk_prob") ?? false,
            json.PositiveInt("decoder_sparse_step", 1),
            onlyDense);
    }

    private static QuantizationConfig? ReadQuantization(JsonFields json)
    {
        // MLX writes the same object under both names; prefer the MLX one.
        var field = json.Has("quantization") ? "quantization" : "quantization_config";
        if (json.Object(field) is not { } q)
        {
            return null;
        }

        if (q.String("quant_method") is { } method)
        {
            throw q.Error("quant_method", $"Only MLX affine quantization is supported, got '{method}'.");
        }

        if (q.String("mode") is { } mode && mode != "affine")
        {
            throw q.Error("mode", $"Only MLX 'affine' quantization is supported, got '{mode}'.");
        }

        var global = ReadQuantizationSpec(q);
        var overrides = new Dictionary<string, QuantizationSpec?>(StringComparer.Ordinal);
        foreach (var entry in q.Element.EnumerateObject())
        {
            switch (entry.Value.ValueKind)
            {
                case JsonValueKind.Object:
                    overrides[entry.Name] = ReadQuantizationSpec(new JsonFields(entry.Value, q.Path, q.Name(entry.Name) + "."));
                    break;
                case JsonValueKind.False:
                    overrides[entry.Name] = null;
                    break;
                case JsonValueKind.True:
                    overrides[entry.Name] = global;
                    break;
            }
        }

        return new QuantizationConfig(global, overrides);
    }

    private static QuantizationSpec ReadQuantizationSpec(JsonFields json)
    {
        var bits = json.RequiredInt("bits");
        if (bits is not (4 or 8))
        {
            throw json.Error("bits", $"Only 4- and 8-bit quantization is supported, got {bits}.");
        }

        var groupSize = json.RequiredInt("group_size");
        if (groupSize is not (32 or 64 or 128))
        {
            throw json.Error("group_size", $"Group size must be 32, 64 or 128, got {groupSize}.");
        }

        return new QuantizationSpec(bits, groupSize);
    }

    private static DType? ReadDType(JsonFields json)
    {
        var field = json.Has("dtype") ? "dtype" : "torch_dtype";
        return json.String(field) switch
        {
            null => null,
            "float32" => Tensors.DType.F32,
            "float16" => Tensors.DType.F16,
            "bfloat16" => Tensors.DType.BF16,
            var other => throw json.Error(field, $"Unsupported dtype '{other}'; expected float32, float16 or bfloat16."),
        };
    }
}
