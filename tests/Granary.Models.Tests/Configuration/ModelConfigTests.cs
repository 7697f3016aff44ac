using Granary.Models.Configuration;
using Granary.Tensors;

namespace Granary.Models.Tests.Configuration;

public sealed class ModelConfigTests
{
    private const string Llama3NewStyle = """
        {
          "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320, "hidden_size": 128,
          "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
          "head_dim": 16, "rms_norm_eps": 1e-05, "max_position_embeddings": 2048, "tie_word_embeddings": false,
          "dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": [2, 7],
          "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
        }
        """;

    private const string Llama3OldStyle = """
        {
          "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 320, "hidden_size": 128,
          "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 8, "num_key_value_heads": 2,
          "head_dim": 16, "rms_norm_eps": 1e-05, "max_position_embeddings": 2048, "tie_word_embeddings": false,
          "torch_dtype": "bfloat16", "rope_theta": 500000.0,
          "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64}
        }
        """;

    [Fact]
    public void BothRopeStylesGiveTheDocumentedLlama3Frequencies()
    {
        var fromNew = ModelConfig.Parse(Llama3NewStyle).Rope.ComputeInverseFrequencies(16);
        var fromOld = ModelConfig.Parse(Llama3OldStyle).Rope.ComputeInverseFrequencies(16);

        var expected = Llama3InverseFrequencies(500000.0, 16, factor: 8, low: 1, high: 4, originalContext: 64);
        Assert.Equal(fromNew, fromOld);
        AssertClose(expected, fromNew);

        // The test must cover all three bands: kept, divided and blended.
        var unscaled = DefaultInverseFrequencies(500000.0, 16);
        Assert.Contains(Enumerable.Range(0, 8), i => fromNew[i] == (float)unscaled[i]);
        Assert.Contains(Enumerable.Range(0, 8), i => Math.Abs(fromNew[i] - (unscaled[i] / 8)) < 1e-6 * unscaled[i]);
        Assert.Contains(Enumerable.Range(0, 8), i => fromNew[i] < unscaled[i] * 0.99 && fromNew[i] > unscaled[i] / 8 * 1.01);
    }

    [Fact]
    public void DefaultRopeMatchesTheFormulaInBothStyles()
    {
        var newStyle = Qwen3Json("\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 1000000.0}");
        var oldStyle = Qwen3Json("\"rope_theta\": 1000000.0, \"rope_scaling\": null");

        var fromNew = ModelConfig.Parse(newStyle).Rope.ComputeInverseFrequencies(32);
        var fromOld = ModelConfig.Parse(oldStyle).Rope.ComputeInverseFrequencies(32);

        Assert.Equal(fromNew, fromOld);
        AssertClose(DefaultInverseFrequencies(1000000.0, 32), fromNew);
    }

    [Fact]
    public void LlamaFieldsAreRead()
    {
        var config = ModelConfig.Parse(Llama3NewStyle);

        Assert.Equal("llama", config.ModelType);
        Assert.Equal("LlamaForCausalLM", config.Architecture);
        Assert.Equal((320, 128, 192, 3, 8, 2, 16), (config.VocabularySize, config.HiddenSize, config.IntermediateSize, config.LayerCount, config.AttentionHeadCount, config.KeyValueHeadCount, config.HeadDim));
        Assert.Equal(1e-5f, config.RmsNormEpsilon);
        Assert.False(config.TieWordEmbeddings);
        Assert.False(config.QueryKeyValueBias);
        Assert.False(config.QueryKeyNorm);
        Assert.Equal(DType.BF16, config.DType);
        Assert.Equal(DType.BF16, ModelConfig.Parse(Llama3OldStyle).DType);
        Assert.Equal([2, 7], config.EosTokenIds);
        Assert.Null(config.MixtureOfExperts);
    }

    [Fact]
    public void Qwen2AlwaysHasQueryKeyValueBiasAndDerivesHeadDim()
    {
        var config = ModelConfig.Parse("""
            {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 96, "intermediate_size": 8, "num_hidden_layers": 1,
             "num_attention_heads": 6, "num_key_value_heads": 2, "tie_word_embeddings": true, "use_sliding_window": false}
            """);

        Assert.True(config.QueryKeyValueBias);
        Assert.False(config.OutputProjectionBias);
        Assert.Equal(16, config.HeadDim);
        Assert.True(config.TieWordEmbeddings);
    }

    [Fact]
    public void ModelTypeComesFromArchitecturesWhenAbsent()
    {
        var config = ModelConfig.Parse("""
            {"architectures": ["Qwen3ForCausalLM"], "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8,
             "num_hidden_layers": 1, "num_attention_heads": 4, "head_dim": 32}
            """);

        Assert.Equal("qwen3", config.ModelType);
        Assert.True(config.QueryKeyNorm);
        Assert.Equal(32, config.HeadDim);
    }

    [Fact]
    public void MixtureOfExpertsAcceptsBothExpertCountNames()
    {
        const string common = """
            "model_type": "qwen3_moe", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 4,
            "num_attention_heads": 4, "head_dim": 16, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
            "norm_topk_prob": true, "decoder_sparse_step": 2, "mlp_only_layers": [3]
            """;
        var a = ModelConfig.Parse("{" + common + ", \"num_experts\": 8}").MixtureOfExperts!;
        var b = ModelConfig.Parse("{" + common + ", \"num_local_experts\": 8}").MixtureOfExperts!;

        Assert.Equal(8, a.ExpertCount);
        Assert.Equal(8, b.ExpertCount);
        Assert.Equal((2, 32, true), (a.ExpertsPerToken, a.ExpertIntermediateSize, a.NormalizeTopKProbabilities));

        // Sparse where (layer + 1) % step == 0, except mlp_only_layers.
        Assert.Equal([false, true, false, false], Enumerable.Range(0, 4).Select(a.IsSparseLayer));
    }

    [Fact]
    public void QuantizationWithPerModuleOverrides()
    {
        var config = ModelConfig.Parse(Qwen3Json("""
            "quantization": {"group_size": 64, "bits": 4, "model.layers.0.mlp.down_proj": {"group_size": 32, "bits": 8},
                             "lm_head": false}
            """));

        var quantization = config.Quantization!;
        Assert.Equal(new QuantizationSpec(4, 64), quantization.For("model.layers.0.self_attn.q_proj"));
        Assert.Equal(new QuantizationSpec(8, 32), quantization.For("model.layers.0.mlp.down_proj"));
        Assert.Null(quantization.For("lm_head"));
    }

    [Theory]
    [InlineData("\"model_type\": \"mistral\"", "model_type", "mistral")]
    [InlineData("\"rope_parameters\": {\"rope_type\": \"yarn\", \"rope_theta\": 10000.0, \"factor\": 4.0}", "rope_parameters.rope_type", "yarn")]
    [InlineData("\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}", "rope_scaling.type", "dynamic")]
    [InlineData("\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}", "rope_scaling.low_freq_factor", "missing")]
    [InlineData("\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}", "quantization_config.quant_method", "gptq")]
    [InlineData("\"quantization\": {\"group_size\": 64, \"bits\": 3}", "quantization.bits", "3")]
    [InlineData("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"lm_head\": {\"group_size\": 48, \"bits\": 4}}", "quantization.lm_head.group_size", "48")]
    [InlineData("\"num_key_value_heads\": 3", "num_key_value_heads", "3")]
    [InlineData("\"hidden_act\": \"gelu\"", "hidden_act", "gelu")]
    [InlineData("\"rms_norm_eps\": -1", "rms_norm_eps", "-1")]
    [InlineData("\"torch_dtype\": \"float8_e4m3fn\"", "torch_dtype", "float8")]
    [InlineData("\"use_sliding_window\": true", "use_sliding_window", "Sliding")]
    [InlineData("\"layer_types\": [\"full_attention\", \"sliding_attention\"]", "layer_types", "sliding_attention")]
    public void UnsupportedOrMalformedFieldsAreNamed(string field, string expectedItem, string expectedText)
    {
        var error = Assert.Throws<ModelLoadException>(() => ModelConfig.Parse(Qwen3Json(field), "my/config.json"));

        Assert.Equal("my/config.json", error.FilePath);
        Assert.Equal(expectedItem, error.Item);
        Assert.Contains(expectedText, error.Message);
    }

    [Fact]
    public void MissingRequiredFieldIsNamed()
    {
        var error = Assert.Throws<ModelLoadException>(() => ModelConfig.Parse("""{"model_type": "llama", "vocab_size": 10}"""));

        Assert.Equal("hidden_size", error.Item);
    }

    [Fact]
    public void GenerationConfigReadsEosListAndDefaults()
    {
        using var directory = new TestDirectory();
        File.WriteAllText(directory.File(GenerationConfig.FileName), """{"bos_token_id": 1, "eos_token_id": [2, 5], "temperature": 0.6, "top_p": 0.95, "top_k": 20, "do_sample": true}""");
        var model = ModelConfig.Parse(Llama3NewStyle);

        var generation = GenerationConfig.Load(directory.Path, model);

        Assert.Equal(1, generation.BosTokenId);
        Assert.Equal([2, 5], generation.EosTokenIds);
        Assert.Equal((0.6f, 0.95f, 20, true), (generation.Temperature, generation.TopP, generation.TopK, generation.DoSample));
        Assert.Equal(1.0f, generation.RepetitionPenalty);
    }

    [Fact]
    public void GenerationConfigFallsBackToModelConfig()
    {
        using var directory = new TestDirectory();

        var generation = GenerationConfig.Load(directory.Path, ModelConfig.Parse(Llama3NewStyle));

        Assert.Equal([2, 7], generation.EosTokenIds);
        Assert.Equal(50, generation.TopK);
    }

    private static string Qwen3Json(string extra) =>
        "{" + (extra.Contains("\"model_type\"", StringComparison.Ordinal) ? "" : "\"model_type\": \"qwen3\", ") + """
        "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        """ + extra + "}";

    // Independent of the implementation: the formulas written out in double precision.
    private static double[] DefaultInverseFrequencies(double theta, int dim) =>
        Enumerable.Range(0, dim / 2).Select(i => 1.0 / Math.Pow(theta, 2.0 * i / dim)).ToArray();

    private static double[] Llama3InverseFrequencies(double theta, int dim, double factor, double low, double high, double originalContext) =>
        DefaultInverseFrequencies(theta, dim).Select(f =>
        {
            var wavelength = 2 * Math.PI / f;
            if (wavelength < originalContext / high)
            {
                return f;
            }

            if (wavelength > originalContext / low)
            {
                return f / factor;
            }

            var smooth = ((originalContext / wavelength) - low) / (high - low);
            return ((1 - smooth) * f / factor) + (smooth * f);
        }).ToArray();

    private static void AssertClose(double[] expected, float[] actual)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (var i = 0; i < expected.Length; i++)
        {
            Assert.True(Math.Abs(actual[i] - expected[i]) <= 1e-6 * expected[i], $"inv_freq[{i}]: expected {expected[i]}, got {actual[i]}");
        }
    }
}
