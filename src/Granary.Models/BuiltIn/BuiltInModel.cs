using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Granary.Models.Safetensors;
using Granary.Tensors;
using Granary.Tensors.Numerics;

namespace Granary.Models.BuiltIn;

/// <summary>
/// The model used when no --model is given: "granary-builtin-v2", a Qwen3-architecture decoder (12 layers,
/// hidden 768, 12 query / 4 key-value heads of 64, SwiGLU 2048, ~78M parameters in bf16) with
/// weights drawn from a fixed seed, and a byte-level BPE tokenizer over English words with ChatML tokens.
/// No weights can be downloaded where Granary is built, so the model is untrained: its text is word salad, but every
/// step of a real checkpoint runs on it (safetensors, config, tokenizer.json, chat template, sharding).
/// It is written once to the cache folder ($GRANARY_CACHE, else ~/.cache/granary) and loaded like any checkpoint.
/// </summary>
public static class BuiltInModel
{
    public const string Name = "granary-builtin-v2";

    private const int Layers = 12;
    private const int Hidden = 768;
    private const int Heads = 12;
    private const int KeyValueHeads = 4;
    private const int HeadDim = 64;
    private const int Intermediate = 2048;
    private const ulong Seed = 0x6772616E617279; // "granary"

    /// <summary>The cache folder for models and downloaded files.</summary>
    public static string CacheDirectory =>
        Environment.GetEnvironmentVariable("GRANARY_CACHE") is { Length: > 0 } cache
            ? cache
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "granary");

    /// <summary>Returns the built-in model's folder, writing it first if it is not there yet.</summary>
    public static string EnsureCreated(TextWriter progress, string? cacheDirectory = null)
    {
        var directory = Path.Combine(cacheDirectory ?? CacheDirectory, "models", Name);
        if (File.Exists(Path.Combine(directory, "model.safetensors")))
        {
            return directory;
        }

        progress.WriteLine($"Writing the built-in model {Name} to {directory} (once)...");
        var staging = directory + ".tmp-" + Environment.ProcessId;
        Directory.CreateDirectory(staging);
        try
        {
            Write(staging);
            Directory.CreateDirectory(Path.GetDirectoryName(directory)!);
            try
            {
                Directory.Move(staging, directory);
            }
            catch (IOException) when (File.Exists(Path.Combine(directory, "model.safetensors")))
            {
                // Another process wrote it first; theirs is identical.
                Directory.Delete(staging, recursive: true);
            }
        }
        catch
        {
            if (Directory.Exists(staging))
            {
                Directory.Delete(staging, recursive: true);
            }

            throw;
        }

        return directory;
    }

    /// <summary>Writes all files of the model into <paramref name="directory"/>.</summary>
    public static void Write(string directory)
    {
        var vocabularySize = BuiltInTokenizerFiles.Write(directory);
        var imEnd = vocabularySize - 1;
        var endOfText = vocabularySize - 3;
        WriteConfig(directory, vocabularySize, endOfText, imEnd);
        WriteWeights(Path.Combine(directory, "model.safetensors"), vocabularySize);
    }

    private static void WriteConfig(string directory, int vocabularySize, int endOfText, int imEnd)
    {
        var config = new JsonObject
        {
            ["architectures"] = new JsonArray("Qwen3ForCausalLM"),
            ["model_type"] = "qwen3",
            ["vocab_size"] = vocabularySize,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Intermediate,
            ["num_hidden_layers"] = Layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KeyValueHeads,
            ["head_dim"] = HeadDim,
            ["hidden_act"] = "silu",
            ["max_position_embeddings"] = 4096,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 1000000.0,
            ["tie_word_embeddings"] = false,
            ["attention_bias"] = false,
            ["torch_dtype"] = "bfloat16",
            ["bos_token_id"] = endOfText,
            ["eos_token_id"] = imEnd,
        };
        var generation = new JsonObject
        {
            ["bos_token_id"] = endOfText,
            ["eos_token_id"] = new JsonArray(imEnd, endOfText),
            ["do_sample"] = true,
            ["temperature"] = 0.7,
            ["top_p"] = 0.8,
            ["top_k"] = 20,
        };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        File.WriteAllText(Path.Combine(directory, "generation_config.json"), generation.ToJsonString());
    }

    private static void WriteWeights(string path, int vocabularySize)
    {
        var random = new SplitMix64(Seed);
        var tensors = new List<(string Name, int[] Shape, bool IsNorm)>
        {
            ("model.embed_tokens.weight", [vocabularySize, Hidden], false),
            ("model.norm.weight", [Hidden], true),
            ("lm_head.weight", [vocabularySize, Hidden], false),
        };
        for (var layer = 0; layer < Layers; layer++)
        {
            var prefix = $"model.layers.{layer}.";
            tensors.Add((prefix + "input_layernorm.weight", [Hidden], true));
            tensors.Add((prefix + "post_attention_layernorm.weight", [Hidden], true));
            tensors.Add((prefix + "self_attn.q_proj.weight", [Heads * HeadDim, Hidden], false));
            tensors.Add((prefix + "self_attn.k_proj.weight", [KeyValueHeads * HeadDim, Hidden], false));
            tensors.Add((prefix + "self_attn.v_proj.weight", [KeyValueHeads * HeadDim, Hidden], false));
            tensors.Add((prefix + "self_attn.o_proj.weight", [Hidden, Heads * HeadDim], false));
            tensors.Add((prefix + "self_attn.q_norm.weight", [HeadDim], true));
            tensors.Add((prefix + "self_attn.k_norm.weight", [HeadDim], true));
            tensors.Add((prefix + "mlp.gate_proj.weight", [Intermediate, Hidden], false));
            tensors.Add((prefix + "mlp.up_proj.weight", [Intermediate, Hidden], false));
            tensors.Add((prefix + "mlp.down_proj.weight", [Hidden, Intermediate], false));
        }

        var writer = new SafetensorsWriter();
        foreach (var (name, shape, isNorm) in tensors)
        {
            var values = new float[Tensor.ShapeElementCount(shape)];
            if (isNorm)
            {
                Array.Fill(values, 1.0f);
            }
            else
            {
                // The usual initialisation of these models: normal with standard deviation 0.02.
                for (var i = 0; i < values.Length; i++)
                {
                    values[i] = 0.02f * random.NextGaussian();
                }

                if (name == "lm_head.weight")
                {
                    SilenceUnprintableBytes(values);
                }
            }

            var bf16 = new ushort[values.Length];
            FloatConversion.SingleToBFloat16(values, bf16);
            writer.Add(name, DType.BF16, shape, MemoryMarshal.AsBytes(bf16.AsSpan()));
        }

        writer.Save(path);
    }

    /// <summary>
    /// Zeroes the output rows of byte tokens outside printable ASCII: their logits stay at 0, below the top-k
    /// the generation config samples from, so the untrained model does not spill broken UTF-8.
    /// </summary>
    private static void SilenceUnprintableBytes(Span<float> outputHead)
    {
        for (var b = 0; b < 256; b++)
        {
            if (b is < ' ' or > '~')
            {
                outputHead.Slice(b * Hidden, Hidden).Clear();
            }
        }
    }

    /// <summary>A small, fast, seedable generator whose sequence is fixed forever (System.Random's may change).</summary>
    private sealed class SplitMix64(ulong state)
    {
        public ulong Next()
        {
            var z = state += 0x9E3779B97F4A7C15UL;
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }

        public float NextGaussian()
        {
            // Box-Muller on two uniforms in (0, 1].
            var u1 = ((Next() >> 11) + 1) * (1.0 / (1UL << 53));
            var u2 = (Next() >> 11) * (1.0 / (1UL << 53));
            return (float)(Math.Sqrt(-2.0 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
    }
}
