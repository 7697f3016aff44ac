using Granary.Collectives;
using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Models.Tests.Reference;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Sharding;

/// <summary>
/// Every reference model split over ranks (tensor parallel over 2 and, where the heads divide, 3 ranks; pipeline
/// parallel over 2 stages; both at once over 2 × 2): every rank's prompt logits and greedy tokens match the 1-rank
/// engine and transformers.
/// </summary>
public sealed class ShardedReferenceTests
{
    private const float Tolerance = 1e-3f;

    public static TheoryData<string, int, int> Layouts()
    {
        var data = new TheoryData<string, int, int>();
        foreach (var name in ReferenceModel.Names())
        {
            var config = ModelConfig.Load(Path.Combine(ReferenceModel.Root, name, ModelConfig.FileName));
            data.Add(name, 1, 2);
            data.Add(name, 2, 1);
            if (config.AttentionHeadCount % 3 == 0)
            {
                data.Add(name, 1, 3);
            }
        }

        data.Add("llama", 3, 1);
        data.Add("qwen3_moe_b", 4, 1);
        data.Add("llama", 2, 2);
        data.Add("qwen3_moe_q4_g32_mlx", 2, 2);
        return data;
    }

    [Theory]
    [MemberData(nameof(Layouts))]
    public void ShardedModelMatchesOneRankAndTransformers(string name, int stages, int tensorRanks)
    {
        var reference = ReferenceModel.Load(name);
        var (singleLogits, singleTokens) = RunOneRank(reference);

        var ranks = ShardRanks.RunAll(stages, tensorRanks, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            var model = loaded.Model;
            var shard = model.Shard;

            // A stage maps only its layers; the embedding and the head live on the first and last stage.
            Assert.Equal(Enumerable.Range(shard.Layers.Start, shard.Layers.Count), model.Layers.Select(l => l.Index));
            Assert.Equal(shard.PipelineStage == 0, model.Embedding is not null);
            Assert.Equal(shard.PipelineStage == stages - 1, model.OutputHead is not null);
            var (logits, tokens) = Generate(model, reference);
            return (logits, tokens, Shard: shard);
        });

        var vocabulary = reference.Logits[0].Length;
        foreach (var (logits, tokens, shard) in ranks)
        {
            var where = $"{name}, stage {shard.PipelineStage}/{stages}, tensor rank {shard.TensorRank}/{tensorRanks}";
            for (var row = 0; row < reference.Logits.Length; row++)
            {
                LogitChecks.AssertClose(reference.Logits[row], logits.AsSpan(row * vocabulary, vocabulary), Tolerance, $"{where}, position {row} vs transformers");
                LogitChecks.AssertClose(singleLogits.AsSpan(row * vocabulary, vocabulary), logits.AsSpan(row * vocabulary, vocabulary), Tolerance, $"{where}, position {row} vs 1 rank");
            }

            Assert.Equal(singleTokens, tokens);
            Assert.Equal(reference.GreedyTokens, tokens);
        }

        // The stages hold consecutive runs of layers that together make the whole model.
        var layers = ranks.Select(r => r.Shard.Layers).Distinct().OrderBy(l => l.Start).ToArray();
        Assert.Equal(stages, layers.Length);
        Assert.Equal(0, layers[0].Start);
        Assert.All(layers.Skip(1).Zip(layers), pair => Assert.Equal(pair.Second.End, pair.First.Start));
        Assert.Equal(ModelConfig.Load(Path.Combine(reference.Directory, ModelConfig.FileName)).LayerCount, layers[^1].End);
    }

    [Fact]
    public void TensorParallelRanksHoldAboutHalfTheLayerWeights()
    {
        var reference = ReferenceModel.Load("llama");
        long single;
        using (var backend = new CpuBackend(threads: 1))
        using (var loaded = ModelLoader.Load(reference.Directory, backend))
        {
            single = loaded.Model.Layers.Sum(l => l.WeightBytesHeld);
        }

        var held = ShardRanks.RunAll(1, 2, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            return loaded.Model.Layers.Sum(l => l.WeightBytesHeld);
        });

        // Norms are replicated; every projection is split in two.
        foreach (var bytes in held)
        {
            Assert.InRange(bytes, single / 2, (single / 2) + (single / 20));
        }
    }

    [Fact]
    public void HeadsThatDoNotDivideOverTheRanksFailWithAClearError()
    {
        var reference = ReferenceModel.Load("llama");
        var errors = ShardRanks.Run(1, 3, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            return 0;
        });

        foreach (var (_, error) in errors)
        {
            var failure = Assert.IsType<ModelLoadException>(error);
            Assert.Contains("8 attention heads cannot be split over 3 tensor-parallel ranks", failure.Message);
        }
    }

    internal static (float[] Logits, int[] Tokens) Generate(CausalLanguageModel model, ReferenceModel reference)
    {
        using var cache = model.CreateCache(reference.PromptIds.Length + reference.GreedyTokens.Length);
        var logits = model.ForwardAllPositions(reference.PromptIds, cache);
        cache.Reset();
        var last = new float[model.Config.VocabularySize];
        var tokens = new int[reference.GreedyTokens.Length];
        model.Forward(reference.PromptIds, cache, last);
        for (var step = 0; step < tokens.Length; step++)
        {
            tokens[step] = LogitChecks.ArgMax(last);
            if (step + 1 < tokens.Length)
            {
                model.Forward([tokens[step]], cache, last);
            }
        }

        return (logits, tokens);
    }

    private static (float[] Logits, int[] Tokens) RunOneRank(ReferenceModel reference)
    {
        using var backend = new CpuBackend(threads: 1);
        using var loaded = ModelLoader.Load(reference.Directory, backend);
        return Generate(loaded.Model, reference);
    }
}
