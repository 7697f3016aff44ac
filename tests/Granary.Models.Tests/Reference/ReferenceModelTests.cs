using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Reference;

/// <summary>Every reference model: logits and greedy tokens as transformers computes them.</summary>
public sealed class ReferenceModelTests : IDisposable
{
    private const float Tolerance = 1e-3f;

    private readonly CpuBackend _backend = new();

    public static TheoryData<string> Models => new(ReferenceModel.Names());

    public void Dispose() => _backend.Dispose();

    [Theory]
    [MemberData(nameof(Models))]
    public void PromptLogitsMatchTransformers(string name)
    {
        var reference = ReferenceModel.Load(name);
        using var loaded = ModelLoader.Load(reference.Directory, _backend);
        using var cache = loaded.Model.CreateCache(reference.PromptIds.Length);

        var logits = loaded.Model.ForwardAllPositions(reference.PromptIds, cache);

        AssertRowsClose(reference.Logits, logits, loaded.Model.Config.VocabularySize, "prompt");
        Assert.Equal(reference.PromptIds.Length, cache.Length);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void GreedyDecodeWithCacheMatchesTransformers(string name)
    {
        var reference = ReferenceModel.Load(name);
        using var loaded = ModelLoader.Load(reference.Directory, _backend);
        var model = loaded.Model;
        using var cache = model.CreateCache(reference.PromptIds.Length + reference.GreedyTokens.Length);
        var logits = new float[model.Config.VocabularySize];
        var tokens = new List<int>();

        model.Forward(reference.PromptIds, cache, logits);
        for (var step = 0; step < reference.GreedyTokens.Length; step++)
        {
            if (reference.DecodeLogits is { } expected)
            {
                LogitChecks.AssertClose(expected[step], logits, Tolerance, $"decode step {step}");
            }

            tokens.Add(LogitChecks.ArgMax(logits));
            if (step + 1 < reference.GreedyTokens.Length)
            {
                model.Forward([tokens[^1]], cache, logits);
            }
        }

        Assert.Equal(reference.GreedyTokens, tokens);
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void ChunkedPrefillMatchesTransformers(string name)
    {
        var reference = ReferenceModel.Load(name);
        using var loaded = ModelLoader.Load(reference.Directory, _backend, new ModelLoadOptions { PrefillChunkSize = 5 });
        var model = loaded.Model;
        var vocabulary = model.Config.VocabularySize;
        using var cache = model.CreateCache(reference.PromptIds.Length);

        var all = model.ForwardAllPositions(reference.PromptIds, cache);
        AssertRowsClose(reference.Logits, all, vocabulary, "chunked prompt");

        cache.Reset();
        var last = new float[vocabulary];
        model.Forward(reference.PromptIds, cache, last);
        LogitChecks.AssertClose(reference.Logits[^1], last, Tolerance, "chunked prompt, last position");

        // Reusing a cached prefix: drop the tail and run it again.
        cache.Truncate(3);
        model.Forward(reference.PromptIds.AsSpan(3), cache, last);
        LogitChecks.AssertClose(reference.Logits[^1], last, Tolerance, "after truncating to 3 positions");
    }

    private static void AssertRowsClose(float[][] expected, float[] actual, int vocabulary, string what)
    {
        Assert.Equal(expected.Length * vocabulary, actual.Length);
        for (var row = 0; row < expected.Length; row++)
        {
            LogitChecks.AssertClose(expected[row], actual.AsSpan(row * vocabulary, vocabulary), Tolerance, $"{what}, position {row}");
        }
    }
}
