using Granary.Models.Generation;
using Granary.Models.Tests.Reference;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Generation;

/// <summary>The generation loop over a transformers reference model: its greedy path must be transformers' greedy path.</summary>
public sealed class TextGeneratorTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 1);
    private readonly ReferenceModel _reference = ReferenceModel.Load("qwen3_moe");
    private readonly LoadedModel _loaded;

    public TextGeneratorTests()
    {
        _loaded = ModelLoader.Load(_reference.Directory, _backend);
    }

    public void Dispose()
    {
        _loaded.Dispose();
        _backend.Dispose();
    }

    [Fact]
    public void GreedyGenerationReproducesTransformersTokens()
    {
        var statistics = new GenerationStatistics();
        var tokens = Generator().Generate(Request(_reference.GreedyTokens.Length), statistics).Select(t => t.Id).ToArray();

        Assert.Equal(_reference.GreedyTokens, tokens);
        Assert.Equal(_reference.PromptIds.Length, statistics.PromptTokens);
        Assert.Equal(_reference.GreedyTokens.Length, statistics.GeneratedTokens);
        Assert.Equal(FinishReason.Length, statistics.FinishReason);
    }

    [Fact]
    public void AStopTokenEndsGenerationAndIsNotReturned()
    {
        var stopAt = 6;
        var stopId = _reference.GreedyTokens[stopAt];
        var firstOccurrence = Array.IndexOf(_reference.GreedyTokens, stopId);
        var statistics = new GenerationStatistics();

        var tokens = Generator()
            .Generate(Request(20) with { StopTokenIds = [stopId], StopAtEndOfSequence = true }, statistics)
            .Select(t => t.Id)
            .ToArray();

        Assert.Equal(_reference.GreedyTokens[..firstOccurrence], tokens);
        Assert.Equal(FinishReason.Stop, statistics.FinishReason);
    }

    [Fact]
    public void MaxTokensBoundsTheOutput()
    {
        var tokens = Generator().Generate(Request(3)).Select(t => t.Id).ToArray();
        Assert.Equal(_reference.GreedyTokens[..3], tokens);
    }

    [Fact]
    public void CancellationStopsBetweenTokens()
    {
        using var cancellation = new CancellationTokenSource();
        var produced = 0;
        Assert.Throws<OperationCanceledException>(() =>
        {
            foreach (var _ in Generator().Generate(Request(20), cancellationToken: cancellation.Token))
            {
                if (++produced == 2)
                {
                    cancellation.Cancel();
                }
            }
        });
        Assert.Equal(2, produced);
    }

    [Fact]
    public void PromptIdsOutsideTheVocabularyAreRejected()
    {
        var request = Request(5) with { PromptIds = [1, _loaded.Model.Config.VocabularySize] };
        var error = Assert.Throws<ArgumentException>(() => Generator().Generate(request).ToList());
        Assert.Contains("outside the vocabulary", error.Message);
    }

    private TextGenerator Generator() => new(_loaded.Model, tokenizer: null, endOfSequenceIds: new HashSet<int>());

    private GenerationRequest Request(int maxTokens) => new()
    {
        PromptIds = _reference.PromptIds,
        MaxTokens = maxTokens,
        Sampling = SamplingOptions.Greedy,
        StopAtEndOfSequence = false,
    };
}
