using Granary.Collectives;
using Granary.Models.Configuration;
using Granary.Models.Safetensors;
using Granary.Models.Tokenization;
using Granary.Tensors;

namespace Granary.Models.Sharding;

/// <summary>
/// Loads one rank's part of a model directory (the counterpart of MLX's <c>sharded_load</c>): each rank maps only the
/// safetensors files, tensors and byte ranges of its part. Row slices of a tensor (heads of q/k/v, MLP features of
/// gate/up, vocabulary runs of the head, whole experts) are mapped in place; column slices (o_proj and down_proj
/// inputs) are strided in the file and are copied.
/// </summary>
public static class ShardedModelLoader
{
    /// <summary>
    /// Every rank of the world calls this with its groups: <paramref name="pipelineGroup"/> links the ranks that hold
    /// successive runs of layers (stage = rank in it), <paramref name="tensorGroup"/> the ranks that split each layer of
    /// one stage. Either may be null (or a group of one). Layers are given to stages in proportion to the free memory
    /// each stage reports (the least of its tensor ranks). The groups must outlive the model; every rank then runs
    /// <see cref="CausalLanguageModel.Forward"/> with the same ids and gets the same logits. A caller that planned the
    /// stages itself (a Granary coordinator) passes this rank's <paramref name="layers"/> instead.
    /// </summary>
    public static LoadedModel ShardedLoad(
        string modelDirectory, IComputeBackend backend, Group? pipelineGroup, Group? tensorGroup, ModelLoadOptions? options = null, ShardRange? layers = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        options ??= new ModelLoadOptions();
        var (directory, configPath, config, generation, tokenizer) = ModelFiles.Read(modelDirectory, options);

        var planned = layers;
        layers ??= new ShardRange(0, config.LayerCount);
        if (planned is { } run && (run.Start < 0 || run.Count < 1 || run.End > config.LayerCount))
        {
            throw new ModelLoadException(configPath, null, $"Layers {run.Start}..{run.End - 1} are not within the model's {config.LayerCount} layers.");
        }

        if (planned is null && pipelineGroup is { Size: > 1 })
        {
            var stageFree = LeastAcross(tensorGroup, backend.AvailableMemoryBytes);
            var free = new long[pipelineGroup.Size];
            pipelineGroup.AllGather<long>([stageFree], free);
            layers = PipelinePlan.AssignLayers(config.LayerCount, free)[pipelineGroup.Rank];
        }

        ModelPartition partition;
        try
        {
            partition = ModelPartition.Create(config, tensorGroup, pipelineGroup, layers.Value);
        }
        catch (ArgumentException e)
        {
            throw new ModelLoadException(configPath, null, e.Message, e);
        }

        var checkpoint = SafetensorsCheckpoint.Open(directory);
        var model = CausalLanguageModel.Create(config, checkpoint, backend, options, configPath, partition);
        return new LoadedModel(directory, model, tokenizer, generation);
    }

    private static long LeastAcross(Group? group, long value)
    {
        if (group is not { Size: > 1 })
        {
            return value;
        }

        var all = new long[group.Size];
        group.AllGather<long>([value], all);
        return all.Min();
    }
}
