using Granary.Models.Generation;
using Granary.Models.Tests.Reference;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Batching;

/// <summary>
/// The ragged batched forward pass: sequences of different lengths, each with its own cache, in one pass (split over
/// passes of 16 rows here, so one prompt straddles two) give the logits each gives alone, and batched generation the
/// tokens each gives alone.
/// </summary>
public sealed class BatchedForwardTests
{
    private const float Tolerance = 1e-4f;

    /// <summary>
    /// 4-bit layers on AVX-512 CPUs round their inputs to 16-bit fixed point per span of 32 (the same for one token and for
    /// many), so the f32 reassociation noise that separates a batched pass from a lone one (~1e-7) now and then moves an
    /// input across a rounding boundary: a step of 1/65024 of its span's largest value, which the layers above carry to
    /// the logits (measured up to 5e-4). These models are held to the transformers tolerance instead.
    /// </summary>
    private const float FixedPointTolerance = 1e-3f;

    public static TheoryData<string> Models() => ["llama", "llama_bf16", "qwen2", "qwen3", "qwen3_moe", "qwen3_moe_q4_g32_mlx", "qwen3_q4_g64"];

    [Theory]
    [MemberData(nameof(Models))]
    public void BatchedLogitsMatchEachSequenceRunAlone(string name)
    {
        var reference = ReferenceModel.Load(name);
        using var backend = new CpuBackend(threads: 1);
        using var loaded = ModelLoader.Load(reference.Directory, backend, new ModelLoadOptions { PrefillChunkSize = 16 });
        var model = loaded.Model;
        var vocabulary = model.Config.VocabularySize;
        var prompts = BatchTestData.Prompts(reference);
        var (first, late) = (prompts[..3], prompts[3]);
        var tolerance = name.Contains("_q4_", StringComparison.Ordinal) ? FixedPointTolerance : Tolerance;

        // Alone: each prompt, then two decode steps on its greedy tokens; the late prompt alone.
        var alone = first.Select(prompt => RunAlone(model, prompt, decodeSteps: 2)).ToArray();
        var lateAlone = RunAlone(model, late, decodeSteps: 0);

        var caches = first.Select(p => model.CreateCache(p.Length + 4)).ToArray();
        using var lateCache = model.CreateCache(late.Length + 4);
        try
        {
            // Step 1: three prompts of 12, 5 and 37 tokens prefill together (three passes of up to 16 rows).
            var logits = new float[first.Length * vocabulary];
            model.ForwardBatch([.. first.Select((p, i) => new BatchedSequence(caches[i], p))], logits);
            for (var i = 0; i < first.Length; i++)
            {
                LogitChecks.AssertClose(alone[i].Logits[0], logits.AsSpan(i * vocabulary, vocabulary), tolerance, $"{name}, prompt {i}");
            }

            // The reference prompt also matches transformers.
            LogitChecks.AssertClose(reference.Logits[^1], logits.AsSpan(0, vocabulary), 1e-3f, $"{name} vs transformers");

            // Step 2: all three decode while a fourth prompt prefills in the same pass.
            logits = new float[(first.Length + 1) * vocabulary];
            var step = first.Select((_, i) => new BatchedSequence(caches[i], new[] { alone[i].Tokens[0] })).Append(new BatchedSequence(lateCache, late)).ToArray();
            model.ForwardBatch(step, logits);
            for (var i = 0; i < first.Length; i++)
            {
                LogitChecks.AssertClose(alone[i].Logits[1], logits.AsSpan(i * vocabulary, vocabulary), tolerance, $"{name}, decode of {i}");
            }

            LogitChecks.AssertClose(lateAlone.Logits[0], logits.AsSpan(first.Length * vocabulary, vocabulary), tolerance, $"{name}, late prompt");

            // Step 3: a sequence that needs no logits (a prompt chunk short of its end) leaves its row untouched.
            logits.AsSpan().Fill(float.NaN);
            model.ForwardBatch(
                [new BatchedSequence(caches[0], new[] { alone[0].Tokens[1] }), new BatchedSequence(caches[1], new[] { alone[1].Tokens[1] }, NeedsLogits: false)],
                logits.AsSpan(0, 2 * vocabulary));
            LogitChecks.AssertClose(alone[0].Logits[2], logits.AsSpan(0, vocabulary), tolerance, $"{name}, third step of 0");
            Assert.All(logits.AsSpan(vocabulary, vocabulary).ToArray(), value => Assert.True(float.IsNaN(value)));
            Assert.Equal(first[1].Length + 2, caches[1].Length);
        }
        finally
        {
            foreach (var cache in caches)
            {
                cache.Dispose();
            }
        }
    }

    [Theory]
    [InlineData("llama")]
    [InlineData("qwen3_moe")]
    public void BatchedGenerationGivesTheTokensOfEachRequestAlone(string name)
    {
        var reference = ReferenceModel.Load(name);
        using var backend = new CpuBackend(threads: 1);
        using var loaded = ModelLoader.Load(reference.Directory, backend, new ModelLoadOptions { PrefillChunkSize = 16 });
        var prompts = BatchTestData.Prompts(reference);
        GenerationRequest[] requests =
        [
            BatchTestData.Greedy(prompts[0], 20),
            BatchTestData.Greedy(prompts[1], 7),
            BatchTestData.Sampled(prompts[2], 12, seed: 5),
            BatchTestData.Sampled(prompts[3], 15, seed: 9),
            BatchTestData.Greedy(prompts[1], 0),
        ];

        var expected = BatchTestData.OneAtATime(loaded.Model, null, requests);
        var batched = new TextGenerator(loaded.Model, null, new HashSet<int>()).GenerateBatch(requests);

        Assert.Equal(reference.GreedyTokens, batched[0].TokenIds);
        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i], batched[i].Tokens);
            Assert.Equal(requests[i].MaxTokens, batched[i].Statistics.GeneratedTokens);
        }
    }

    [Fact]
    public void ABatchThatRepeatsACacheOrOverrunsOneIsRejected()
    {
        var reference = ReferenceModel.Load("llama");
        using var backend = new CpuBackend(threads: 1);
        using var loaded = ModelLoader.Load(reference.Directory, backend);
        var model = loaded.Model;
        using var cache = model.CreateCache(4);
        var logits = new float[2 * model.Config.VocabularySize];

        var shared = Assert.Throws<ArgumentException>(() => model.ForwardBatch([new(cache, new[] { 1 }), new(cache, new[] { 2 })], logits));
        Assert.Contains("share one cache", shared.Message);
        Assert.Throws<InvalidOperationException>(() => model.ForwardBatch([new(cache, new[] { 1, 2, 3, 4, 5 })], logits.AsSpan(0, model.Config.VocabularySize)));
        Assert.Equal(0, cache.Length);
    }

    private static (float[][] Logits, int[] Tokens) RunAlone(CausalLanguageModel model, int[] prompt, int decodeSteps)
    {
        using var cache = model.CreateCache(prompt.Length + decodeSteps + 1);
        var logits = new float[decodeSteps + 1][];
        var tokens = new int[decodeSteps + 1];
        logits[0] = new float[model.Config.VocabularySize];
        model.Forward(prompt, cache, logits[0]);
        tokens[0] = LogitChecks.ArgMax(logits[0]);
        for (var step = 1; step <= decodeSteps; step++)
        {
            logits[step] = new float[model.Config.VocabularySize];
            model.Forward([tokens[step - 1]], cache, logits[step]);
            tokens[step] = LogitChecks.ArgMax(logits[step]);
        }

        return (logits, tokens);
    }
}
