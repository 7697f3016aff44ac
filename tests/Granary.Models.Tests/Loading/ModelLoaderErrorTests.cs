using Granary.Models.Safetensors;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Loading;

/// <summary>Checkpoints that do not match their config fail with the file, the tensor and the reason.</summary>
public sealed class ModelLoaderErrorTests : IDisposable
{
    private const int Vocabulary = 16;
    private const int Hidden = 8;
    private const int Heads = 2;
    private const int KeyValueHeads = 1;
    private const int HeadDim = 4;
    private const int Intermediate = 12;

    private const string Config = """
        {"model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6, "tie_word_embeddings": false}
        """;

    private readonly TestDirectory _directory = new();
    private readonly CpuBackend _backend = new(threads: 1);

    public void Dispose()
    {
        _backend.Dispose();
        _directory.Dispose();
    }

    [Fact]
    public void CompleteCheckpointLoadsAndCountsWeightBytes()
    {
        Write(Config, LlamaTensors());

        using var loaded = ModelLoader.Load(_directory.Path, _backend);

        // One embedding row, every layer weight, final norm, the whole lm_head; all f32.
        long layer = (2 * Hidden) + (Heads * HeadDim * Hidden) + (2 * KeyValueHeads * HeadDim * Hidden) + (Hidden * Heads * HeadDim) + (3 * Intermediate * Hidden);
        Assert.Equal(4 * (Hidden + layer + Hidden + (Vocabulary * Hidden)), loaded.Model.WeightBytes);
        Assert.Equal(_directory.Path, loaded.Directory);
        Assert.Null(loaded.Tokenizer);
    }

    [Fact]
    public void MissingTensorNamesTheTensorAndTheFile()
    {
        var tensors = LlamaTensors();
        tensors.Remove("model.layers.0.mlp.down_proj.weight");
        Write(Config, tensors);

        var error = Assert.Throws<ModelLoadException>(() => ModelLoader.Load(_directory.Path, _backend));

        Assert.Equal("model.layers.0.mlp.down_proj.weight", error.Item);
        Assert.Equal(_directory.File("model.safetensors"), error.FilePath);
    }

    [Fact]
    public void ShapeMismatchNamesTensorExpectedAndActual()
    {
        var tensors = LlamaTensors();
        tensors["model.layers.0.self_attn.k_proj.weight"] = [Heads * HeadDim, Hidden];
        Write(Config, tensors);

        var error = Assert.Throws<ModelLoadException>(() => ModelLoader.Load(_directory.Path, _backend));

        Assert.Equal("model.layers.0.self_attn.k_proj.weight", error.Item);
        Assert.Contains("expected [4, 8]", error.Message);
        Assert.Contains("got [8, 8]", error.Message);
    }

    [Fact]
    public void QuantizedTensorsWithoutQuantizationSettingsAreRejected()
    {
        var tensors = LlamaTensors();
        tensors["model.layers.0.mlp.gate_proj.scales"] = [Intermediate, 1];
        Write(Config, tensors);

        var error = Assert.Throws<ModelLoadException>(() => ModelLoader.Load(_directory.Path, _backend));

        Assert.Equal("model.layers.0.mlp.gate_proj.scales", error.Item);
        Assert.Contains("quantization", error.Message);
    }

    [Fact]
    public void IntegerNormWeightIsRejected()
    {
        Write(Config, LlamaTensors(), integerTensor: "model.norm.weight");

        var error = Assert.Throws<ModelLoadException>(() => ModelLoader.Load(_directory.Path, _backend));

        Assert.Equal("model.norm.weight", error.Item);
        Assert.Contains("I32", error.Message);
    }

    [Fact]
    public void UnsupportedArchitectureNamesConfigFile()
    {
        Write(Config.Replace("\"llama\"", "\"gpt2\""), LlamaTensors());

        var error = Assert.Throws<ModelLoadException>(() => ModelLoader.Load(_directory.Path, _backend));

        Assert.Equal(_directory.File("config.json"), error.FilePath);
        Assert.Equal("model_type", error.Item);
    }

    private static Dictionary<string, int[]> LlamaTensors() => new()
    {
        ["model.embed_tokens.weight"] = [Vocabulary, Hidden],
        ["model.layers.0.input_layernorm.weight"] = [Hidden],
        ["model.layers.0.post_attention_layernorm.weight"] = [Hidden],
        ["model.layers.0.self_attn.q_proj.weight"] = [Heads * HeadDim, Hidden],
        ["model.layers.0.self_attn.k_proj.weight"] = [KeyValueHeads * HeadDim, Hidden],
        ["model.layers.0.self_attn.v_proj.weight"] = [KeyValueHeads * HeadDim, Hidden],
        ["model.layers.0.self_attn.o_proj.weight"] = [Hidden, Heads * HeadDim],
        ["model.layers.0.mlp.gate_proj.weight"] = [Intermediate, Hidden],
        ["model.layers.0.mlp.up_proj.weight"] = [Intermediate, Hidden],
        ["model.layers.0.mlp.down_proj.weight"] = [Hidden, Intermediate],
        ["model.norm.weight"] = [Hidden],
        ["lm_head.weight"] = [Vocabulary, Hidden],
    };

    private void Write(string config, Dictionary<string, int[]> tensors, string? integerTensor = null)
    {
        File.WriteAllText(_directory.File("config.json"), config);
        var writer = new SafetensorsWriter();
        var random = new Random(7);
        foreach (var (name, shape) in tensors)
        {
            var count = (int)Tensor.ShapeElementCount(shape);
            if (name == integerTensor)
            {
                writer.Add(name, new int[count], shape);
            }
            else
            {
                writer.Add(name, Enumerable.Range(0, count).Select(_ => (float)random.NextDouble() - 0.5f).ToArray(), shape);
            }
        }

        writer.Save(_directory.File("model.safetensors"));
    }
}
