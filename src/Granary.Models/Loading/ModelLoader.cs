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
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new ModelLoadOptions();
        var files = ModelFiles.Read(modelDirectory, options);
        var checkpoint = SafetensorsCheckpoint.Open(files.Directory);
        var model = CausalLanguageModel.Create(files.Config, checkpoint, backend, options, files.ConfigPath);
        return new LoadedModel(files.Directory, model, files.Tokenizer, files.Generation);
    }
}

/// <summary>The small files of a model folder, read and checked before any weights are mapped.</summary>
internal sealed record ModelFiles(string Directory, string ConfigPath, ModelConfig Config, GenerationConfig Generation, ITextTokenizer? Tokenizer)
{
    public static ModelFiles Read(string modelDirectory, ModelLoadOptions options)
    {
        ArgumentNullException.ThrowIfNull(modelDirectory);
        options.Validate();
        var directory = Path.GetFullPath(modelDirectory);
        if (!System.IO.Directory.Exists(directory))
        {
            throw new ModelLoadException(directory, null, "Model directory not found.");
        }

        var configPath = Path.Combine(directory, ModelConfig.FileName);
        var config = ModelConfig.Load(configPath);
        var generation = GenerationConfig.Load(directory, config);
        // The tokenizer is read first so a bad tokenizer fails before any weights are mapped.
        var tokenizer = File.Exists(Path.Combine(directory, "tokenizer.json")) ? HuggingFaceTokenizer.Load(directory) : null;
        return new ModelFiles(directory, configPath, config, generation, tokenizer);
    }
}
