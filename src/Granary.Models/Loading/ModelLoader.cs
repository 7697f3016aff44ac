using Granary.Models.Configuration;
using Granary.Models.Safetensors;
using Granary.Models.Tokenization;
using Granary.Tensors;

namespace Granary.Models;

/// <summary>
/// Loads a Hugging Face (or MLX) model directory: config.json, safetensors weights, generation_config.json and,
/// when there is a tokenizer.json, the tokenizer.
/// </summary>
public static class ModelLoader
{
    public static LoadedModel Load(string modelDirectory, IComputeBackend backend, ModelLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new ModelLoadOptions();
        options.Validate();

        var directory = Path.GetFullPath(modelDirectory);
        if (!Directory.Exists(directory))
        {
            throw new ModelLoadException(directory, null, "Model directory not found.");
        }

        var configPath = Path.Combine(directory, ModelConfig.FileName);
        var config = ModelConfig.Load(configPath);
        var generation = GenerationConfig.Load(directory, config);
        // The tokenizer is read first so a bad tokenizer fails before any weights are mapped.
        var tokenizer = File.Exists(Path.Combine(directory, "tokenizer.json")) ? HuggingFaceTokenizer.Load(directory) : null;
        var checkpoint = SafetensorsCheckpoint.Open(directory);
        var model = CausalLanguageModel.Create(config, checkpoint, backend, options, configPath);
        return new LoadedModel(directory, model, tokenizer, generation);
    }
}
