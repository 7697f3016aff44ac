using System.Text.Json;
using System.Text.Json.Nodes;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Generation;
using Granary.Models.Safetensors;
using Granary.Models.Tokenization;
using Granary.Tensors;
using Granary.Training;

namespace Granary.Gateway.Tests;

/// <summary>
/// The models the gateway tests serve: a tiny chat model (the built-in model's tokenizer and ChatML format over a
/// 2-layer Qwen3 with seeded random weights, so every request takes milliseconds), the tiny Qwen3 reference model
/// (no tokenizer; greedy tokens from Hugging Face transformers) and the built-in model for a slow generation.
/// </summary>
internal static class TestModels
{
    public const string Chat = "tiny-chat";
    public const string Reference = "tiny-qwen3";
    public const string BuiltIn = "builtin";

    /// <summary>The tiny chat model with LoRA adapters merged on the silo.</summary>
    public const string Adapted = "tiny-chat-lora";

    /// <summary>The tiny chat model with an adapter folder that does not exist.</summary>
    public const string MissingAdapters = "tiny-chat-missing-lora";

    /// <summary>The tiny chat model with adapters whose config says rank 8 but whose weights have rank 4.</summary>
    public const string MisfitAdapters = "tiny-chat-misfit-lora";

    /// <summary>Every name the test gateways serve, in the order /v1/models lists them.</summary>
    public static readonly string[] ServedNames = [BuiltIn, Chat, Adapted, MisfitAdapters, MissingAdapters, Reference];

    public static string ReferenceDirectory { get; } = Path.Combine(AppContext.BaseDirectory, "reference", "models", "qwen3");

    /// <summary>Writes the tiny chat model into <paramref name="directory"/>.</summary>
    public static void WriteChatModel(string directory)
    {
        var builtIn = BuiltInModel.EnsureCreated(TextWriter.Null);
        Directory.CreateDirectory(directory);
        foreach (var file in new[] { "tokenizer.json", "tokenizer_config.json" })
        {
            File.Copy(Path.Combine(builtIn, file), Path.Combine(directory, file), overwrite: true);
        }

        var builtInConfig = JsonNode.Parse(File.ReadAllText(Path.Combine(builtIn, "config.json")))!.AsObject();
        var vocabulary = builtInConfig["vocab_size"]!.GetValue<int>();
        const int Hidden = 64, Layers = 2, Heads = 4, KeyValueHeads = 2, HeadDim = 16, Intermediate = 128;
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("Qwen3ForCausalLM"),
            ["model_type"] = "qwen3",
            ["vocab_size"] = vocabulary,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Intermediate,
            ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KeyValueHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = 1024,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 1000000.0,
            ["tie_word_embeddings"] = false,
            ["torch_dtype"] = "float32",
            ["bos_token_id"] = builtInConfig["bos_token_id"]!.GetValue<int>(),
            ["eos_token_id"] = builtInConfig["eos_token_id"]!.GetValue<int>(),
        };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        // Greedy unless a request asks for sampling, so a request without temperature is reproducible.
        File.WriteAllText(Path.Combine(directory, "generation_config.json"), """{"do_sample": false}""");

        var random = new Random(20261126);
        var writer = new SafetensorsWriter();
        void Add(string name, params int[] shape)
        {
            var values = new float[shape.Aggregate(1, (a, b) => a * b)];
            if (name.EndsWith("norm.weight", StringComparison.Ordinal))
            {
                Array.Fill(values, 1f);
            }
            else
            {
                // Wide enough that greedy output varies from token to token and sampling is far from uniform.
                var scale = name == "lm_head.weight" ? 0.5f : 0.15f;
                for (var i = 0; i < values.Length; i++)
                {
                    values[i] = scale * (float)(random.NextDouble() * 2 - 1);
                }

                if (name == "lm_head.weight")
                {
                    // Bytes outside printable ASCII never win, so the text is always whole UTF-8.
                    for (var b = 0; b < 256; b++)
                    {
                        if (b is < ' ' or > '~')
                        {
                            values.AsSpan(b * Hidden, Hidden).Fill(0f);
                        }
                    }

                    // Nor the special tokens: the model never ends early or opens a turn of its own.
                    values.AsSpan((vocabulary - 3) * Hidden, 3 * Hidden).Fill(0f);
                }
            }

            writer.Add(name, values, shape);
        }

        Add("model.embed_tokens.weight", vocabulary, Hidden);
        Add("model.norm.weight", Hidden);
        Add("lm_head.weight", vocabulary, Hidden);
        for (var layer = 0; layer < Layers; layer++)
        {
            var prefix = $"model.layers.{layer}.";
            Add(prefix + "input_layernorm.weight", Hidden);
            Add(prefix + "post_attention_layernorm.weight", Hidden);
            Add(prefix + "self_attn.q_proj.weight", Heads * HeadDim, Hidden);
            Add(prefix + "self_attn.k_proj.weight", KeyValueHeads * HeadDim, Hidden);
            Add(prefix + "self_attn.v_proj.weight", KeyValueHeads * HeadDim, Hidden);
            Add(prefix + "self_attn.o_proj.weight", Hidden, Heads * HeadDim);
            Add(prefix + "self_attn.q_norm.weight", HeadDim);
            Add(prefix + "self_attn.k_norm.weight", HeadDim);
            Add(prefix + "mlp.gate_proj.weight", Intermediate, Hidden);
            Add(prefix + "mlp.up_proj.weight", Intermediate, Hidden);
            Add(prefix + "mlp.down_proj.weight", Hidden, Intermediate);
        }

        writer.Save(Path.Combine(directory, "model.safetensors"));
    }

    /// <summary>
    /// Writes LoRA adapters (rank 4 on the attention projections) for the model in <paramref name="modelDirectory"/>
    /// into <paramref name="adapterDirectory"/>, as `granary lora` saves them, with B drawn from a seed so that they
    /// change the model's answers (trained adapters start at B = 0, no change).
    /// </summary>
    public static void WriteAdapters(string modelDirectory, string adapterDirectory, int seed)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(modelDirectory, backend);
        var options = new FineTuneOptions
        {
            Type = FineTuneType.Lora,
            Seed = seed,
            Lora = new LoraOptions { Rank = 4, Scale = 2f, Keys = ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"] },
        };
        var model = TrainingModel.Create(loaded.Model, options);
        var random = new Random(seed);
        foreach (var linear in model.AdaptedLinears.Values.OrderBy(linear => linear.Name, StringComparer.Ordinal))
        {
            foreach (ref var b in linear.Lora!.B.Value.AsSpan())
            {
                b = ((random.NextSingle() * 2) - 1) * 0.2f;
            }
        }

        AdapterFiles.Save(model, adapterDirectory, modelDirectory);
    }

    /// <summary>The prompt ids and greedy tokens Hugging Face transformers produced for the tiny Qwen3 reference model.</summary>
    public static (int[] PromptIds, int[] GreedyTokens) ReferenceTokens()
    {
        using var document = JsonDocument.Parse(File.ReadAllText(Path.Combine(ReferenceDirectory, "reference.json")));
        var root = document.RootElement;
        return (
            [.. root.GetProperty("prompt_ids").EnumerateArray().Select(id => id.GetInt32())],
            [.. root.GetProperty("greedy_tokens").EnumerateArray().Select(id => id.GetInt32())]);
    }
}

/// <summary>The single-process engine on a model folder: the baseline the gateway's answers must equal.</summary>
internal sealed class DirectEngine : IDisposable
{
    private readonly IComputeBackend _backend = ComputeBackends.Create("cpu", threads: 1);
    private readonly LoadedModel _loaded;

    public DirectEngine(string directory) => _loaded = ModelLoader.Load(directory, _backend);

    /// <summary>A conversation as the silo encodes it: the model's chat format, then its tokenizer.</summary>
    public int[] EncodeChat(params (string Role, string Content)[] messages)
    {
        var tokenizer = _loaded.Tokenizer!;
        var text = tokenizer.ApplyChatTemplate([.. messages.Select(message => new ChatMessage(message.Role, message.Content))]);
        return [.. tokenizer.Encode(text, addSpecialTokens: false)];
    }

    public (int[] Tokens, string Text, Models.Generation.FinishReason Finish) Generate(int[] promptIds, int maxTokens, SamplingOptions sampling, params string[] stops)
    {
        var generator = new TextGenerator(_loaded.Model, _loaded.Tokenizer);
        var statistics = new GenerationStatistics();
        var tokens = new List<int>();
        var text = new System.Text.StringBuilder();
        var request = new GenerationRequest { PromptIds = promptIds, MaxTokens = maxTokens, Sampling = sampling, StopStrings = stops };
        foreach (var token in generator.Generate(request, statistics))
        {
            if (token.HasToken)
            {
                tokens.Add(token.Id);
            }

            text.Append(token.Text);
        }

        return ([.. tokens], text.ToString(), statistics.FinishReason);
    }

    public void Dispose()
    {
        _loaded.Dispose();
        _backend.Dispose();
    }
}
