using Granary.Models.Configuration;
using Granary.Models.Tokenization;

namespace Granary.Models;

/// <summary>A model directory loaded for inference: the network, its tokenizer when present, and its decoding defaults.</summary>
public sealed class LoadedModel : IDisposable
{
    internal LoadedModel(string directory, CausalLanguageModel model, ITextTokenizer? tokenizer, GenerationConfig generation)
    {
        Directory = directory;
        Model = model;
        Tokenizer = tokenizer;
        Generation = generation;
    }

    public string Directory { get; }

    public CausalLanguageModel Model { get; }

    /// <summary>Null when the directory has no tokenizer.json.</summary>
    public ITextTokenizer? Tokenizer { get; }

    public GenerationConfig Generation { get; }

    public void Dispose() => Model.Dispose();
}
