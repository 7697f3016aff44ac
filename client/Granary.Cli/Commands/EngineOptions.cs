using Granary.Collectives;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Models.Configuration;
using Granary.Models.Generation;
using Granary.Models.Sharding;
using Granary.Tensors;
using Granary.Training;

namespace Granary.Cli.Commands;

/// <summary>Options shared by the commands that run a model in this process: which model, backend and sampling.</summary>
internal static class EngineOptions
{
    public static readonly string[] ValueOptions =
    [
        "--model", "--backend", "--threads", "--max-tokens", "--temperature", "--top-p", "--top-k", "--min-p",
        "--repetition-penalty", "--repetition-context-size", "--seed", "--stop", "--system", "--adapter-path",
    ];

    public static readonly string[] FlagOptions = ["--verbose", "--pipeline"];

    /// <summary>Loads the model named by --model, or the built-in default model, on the chosen backend.</summary>
    public static LoadedModel LoadModel(CommandArguments arguments, TextWriter progress) => LoadModel(arguments, progress, world: null);

    /// <summary>
    /// As <see cref="LoadModel(CommandArguments, TextWriter)"/>; when <paramref name="world"/> has several ranks (under
    /// `granary launch`), loads this rank's share: tensor parallel over all ranks, or pipeline parallel with --pipeline.
    /// </summary>
    public static LoadedModel LoadModel(CommandArguments arguments, TextWriter progress, Group? world)
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

            if (arguments.Get("--adapter-path") is { } adapters)
            {
                directory = FuseAdapters(directory, adapters, progress);
            }

            if (world is not { Size: > 1 })
            {
                progress.WriteLine($"Loading {directory} on {backend.Name}...");
                return ModelLoader.Load(directory, backend);
            }

            var pipeline = arguments.Has("--pipeline");
            progress.WriteLine($"Loading {directory} on {backend.Name}, {(pipeline ? "pipeline" : "tensor")} parallel over {world.Size} ranks ({world.Backend})...");
            var loaded = pipeline
                ? ShardedModelLoader.ShardedLoad(directory, backend, pipelineGroup: world, tensorGroup: null)
                : ShardedModelLoader.ShardedLoad(directory, backend, pipelineGroup: null, tensorGroup: world);
            var shard = loaded.Model.Shard;
            progress.WriteLine(
                $"Rank {world.Rank}: layers {shard.Layers.Start}..{shard.Layers.End - 1}, tensor rank {shard.TensorRank}/{shard.TensorSize}, " +
                $"{shard.WeightBytesHeld / 1e6:F1} MB of weights");
            return loaded;
        }
        catch
        {
            backend.Dispose();
            throw;
        }
    }

    /// <summary>Merges the adapters into a temporary copy of the model (removed when the process exits) and returns it.</summary>
    private static string FuseAdapters(string modelDirectory, string adapterDirectory, TextWriter progress)
    {
        if (!Directory.Exists(adapterDirectory))
        {
            throw new UsageException($"adapter directory '{adapterDirectory}' does not exist.");
        }

        progress.WriteLine($"Merging adapters from {adapterDirectory} into {modelDirectory}...");
        return AdaptedModels.FuseToTemporary(modelDirectory, adapterDirectory);
    }

    /// <summary>
    /// Sampling from the command line, falling back to the model's generation_config.json; a model that does not ask
    /// for sampling there decodes greedily unless --temperature says otherwise.
    /// </summary>
    public static SamplingOptions Sampling(CommandArguments arguments, GenerationConfig defaults) => Sampling(arguments, defaults, world: null);

    /// <summary>
    /// As <see cref="Sampling(CommandArguments, GenerationConfig)"/>; every rank of <paramref name="world"/> must draw
    /// the same tokens from the same logits, so without --seed rank 0 picks a seed and broadcasts it.
    /// </summary>
    public static SamplingOptions Sampling(CommandArguments arguments, GenerationConfig defaults, Group? world) => new()
    {
        Temperature = arguments.GetFloat("--temperature", defaults.DoSample ? defaults.Temperature : 0f),
        TopP = arguments.GetFloat("--top-p", defaults.DoSample ? defaults.TopP : 1f),
        TopK = arguments.GetInt("--top-k", defaults.DoSample ? defaults.TopK : 0),
        MinP = arguments.GetFloat("--min-p", defaults.DoSample ? defaults.MinP : 0f),
        RepetitionPenalty = arguments.GetFloat("--repetition-penalty", defaults.RepetitionPenalty),
        RepetitionContextSize = arguments.GetInt("--repetition-context-size", 64),
        Seed = arguments.GetIntOrNull("--seed") ?? SharedSeed(world),
    };

    private static int? SharedSeed(Group? world)
    {
        if (world is not { Size: > 1 })
        {
            return null;
        }

        Span<int> seed = [world.Rank == 0 ? Random.Shared.Next() : 0];
        world.Broadcast(seed, root: 0);
        return seed[0];
    }

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
