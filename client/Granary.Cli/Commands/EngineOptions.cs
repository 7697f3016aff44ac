using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Configuration;
using Granary.Models.Generation;
using Granary.Tensors;

namespace Granary.Cli.Commands;

/// <summary>Options shared by the commands that run a model in this process: which model, backend and sampling.</summary>
internal static class EngineOptions
{
    public static readonly string[] ValueOptions =
    [
        "--model", "--backend", "--threads", "--max-tokens", "--temperature", "--top-p", "--top-k", "--min-p",
        "--repetition-penalty", "--repetition-context-size", "--seed", "--stop", "--system",
    ];

    public static readonly string[] FlagOptions = ["--verbose"];

    /// <summary>Loads the model named by --model, or the built-in default model, on the chosen backend.</summary>
    public static LoadedModel LoadModel(CommandArguments arguments, TextWriter progress)
    {
        var backend = ComputeBackends.Create(arguments.Get("--backend") ?? "cpu", arguments.GetIntOrNull("--threads"));
        try
        {
            var directory = arguments.Get("--model");
            if (directory is null)
            {
                directory = BuiltInModel.EnsureCreated(progress);
            }
            else if (!Directory.Exists(directory))
            {
                throw new UsageException($"model directory '{directory}' does not exist.");
            }

            progress.WriteLine($"Loading {directory} on {backend.Name}...");
            return ModelLoader.Load(directory, backend);
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Sampling from the command line, falling back to the model's generation_config.json; a model that does not ask
    /// for sampling there decodes greedily unless --temperature says otherwise.
    /// </summary>
    public static SamplingOptions Sampling(CommandArguments arguments, GenerationConfig defaults) => new()
    {
        Temperature = arguments.GetFloat("--temperature", defaults.DoSample ? defaults.Temperature : 0f),
        TopP = arguments.GetFloat("--top-p", defaults.DoSample ? defaults.TopP : 1f),
        TopK = arguments.GetInt("--top-k", defaults.DoSample ? defaults.TopK : 0),
        MinP = arguments.GetFloat("--min-p", defaults.DoSample ? defaults.MinP : 0f),
        RepetitionPenalty = arguments.GetFloat("--repetition-penalty", defaults.RepetitionPenalty),
        RepetitionContextSize = arguments.GetInt("--repetition-context-size", 64),
        Seed = arguments.GetIntOrNull("--seed"),
    };

    /// <summary>Ids that end generation: the tokenizer's, generation_config.json's and config.json's.</summary>
    public static IReadOnlySet<int> EndOfSequenceIds(LoadedModel loaded)
    {
        var ids = new HashSet<int>(loaded.Generation.EosTokenIds);
        ids.UnionWith(loaded.Model.Config.EosTokenIds);
        if (loaded.Tokenizer is not null)
        {
            ids.UnionWith(loaded.Tokenizer.EndOfSequenceIds);
        }

        return ids;
    }
}
