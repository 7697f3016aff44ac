using Granary.Models.Generation;
using Granary.Models.Sharding;
using Granary.Models.Tests.Reference;
using Granary.Models.Tests.Sharding;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Batching;

/// <summary>
/// The batched forward pass and batched generation on sharded models: the whole batch moves through the tensor-parallel
/// ranks and the pipeline stages (in micro-batches, the last stage sending back only token ids) and every rank ends
/// with what one rank computes.
/// </summary>
public sealed class ShardedBatchTests
{
    private const float Tolerance = 1e-4f;

    [Theory]
    [InlineData("llama", 1, 2)]
    [InlineData("qwen3_moe", 1, 2)]
    [InlineData("llama", 2, 1)]
    [InlineData("qwen3_moe", 2, 1)]
    [InlineData("qwen3", 2, 2)]
    public void ShardedBatchesMatchOneRank(string name, int stages, int tensorRanks)
    {
        var reference = ReferenceModel.Load(name);
        var prompts = BatchTestData.Prompts(reference);
        GenerationRequest[] requests =
        [
            BatchTestData.Greedy(prompts[0], 12),
            BatchTestData.Sampled(prompts[1], 9, seed: 11),
            BatchTestData.Greedy(prompts[2], 6),
            BatchTestData.Sampled(prompts[3], 10, seed: 12),
        ];

        float[] expectedLogits;
        GeneratedToken[][] expectedTokens;
        using (var backend = new CpuBackend(threads: 1))
        using (var loaded = ModelLoader.Load(reference.Directory, backend, new ModelLoadOptions { PrefillChunkSize = 16 }))
        {
            expectedLogits = PrefillLogits(loaded.Model, prompts);
            expectedTokens = BatchTestData.OneAtATime(loaded.Model, null, requests);
        }

        var ranks = ShardRanks.RunAll(stages, tensorRanks, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(
                reference.Directory, backend, groups.Pipeline, groups.Tensor, new ModelLoadOptions { PrefillChunkSize = 16 });
            var generator = new TextGenerator(loaded.Model, null, new HashSet<int>());
            var logits = PrefillLogits(loaded.Model, prompts);
            var batched = generator.GenerateBatch(requests).Select(s => s.Tokens.ToArray()).ToArray();

            // One request through the token path of the pipeline: the last stage samples, the ids come back.
            var alone = generator.Generate(requests[1]).ToArray();
            return (logits, batched, alone);
        });

        var vocabulary = reference.Logits[0].Length;
        foreach (var (rank, (logits, batched, alone)) in ranks.Index())
        {
            for (var i = 0; i < prompts.Length; i++)
            {
                LogitChecks.AssertClose(
                    expectedLogits.AsSpan(i * vocabulary, vocabulary), logits.AsSpan(i * vocabulary, vocabulary), Tolerance, $"{name}, rank {rank}, prompt {i}");
            }

            for (var i = 0; i < requests.Length; i++)
            {
                Assert.Equal(expectedTokens[i], batched[i]);
            }

            Assert.Equal(expectedTokens[1], alone);
        }
    }

    private static float[] PrefillLogits(CausalLanguageModel model, int[][] prompts)
    {
        var caches = prompts.Select(p => model.CreateCache(p.Length)).ToArray();
        try
        {
            var logits = new float[prompts.Length * model.Config.VocabularySize];
            model.ForwardBatch([.. prompts.Select((p, i) => new BatchedSequence(caches[i], p))], logits);
            return logits;
        }
        finally
        {
            foreach (var cache in caches)
            {
                cache.Dispose();
            }
        }
    }
}
