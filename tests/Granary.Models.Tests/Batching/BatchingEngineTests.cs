using Granary.Models.Batching;
using Granary.Models.Generation;
using Granary.Models.Tests.Reference;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Batching;

/// <summary>
/// The continuous-batching engine on the tiny mixture-of-experts reference model: concurrent, late-joining, cancelled
/// and prompt-cached requests stream exactly what <see cref="TextGenerator"/> streams for each alone.
/// </summary>
public sealed class BatchingEngineTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    private readonly CpuBackend _backend = new(threads: 1);
    private readonly ReferenceModel _reference = ReferenceModel.Load("qwen3_moe");
    private readonly LoadedModel _loaded;
    private readonly WordTokenizer _tokenizer;

    public BatchingEngineTests()
    {
        _loaded = ModelLoader.Load(_reference.Directory, _backend);
        _tokenizer = new WordTokenizer(_loaded.Model.Config.VocabularySize);
    }

    public void Dispose()
    {
        _loaded.Dispose();
        _backend.Dispose();
    }

    [Fact]
    public async Task ConcurrentRequestsStreamWhatEachStreamsAlone()
    {
        var prompts = BatchTestData.Prompts(_reference);
        var greedyText = string.Concat(_reference.GreedyTokens[..9].Select(WordTokenizer.Word));
        GenerationRequest[] requests =
        [
            BatchTestData.Greedy(prompts[0], 20),
            BatchTestData.Greedy(prompts[1], 6),
            BatchTestData.Sampled(prompts[2], 14, seed: 3),
            BatchTestData.Sampled(prompts[3], 11, seed: 4),

            // A stop string in the middle of the greedy text: held back, then cut, as TextGenerator does.
            BatchTestData.Greedy(prompts[0], 20) with { StopStrings = [greedyText[^6..^1]] },
            BatchTestData.Greedy(prompts[2], 9),
        ];
        var expected = BatchTestData.OneAtATime(_loaded.Model, _tokenizer, requests);

        // Four slots for six requests and 8-token prefill chunks: requests queue, join mid-run and prefill between decode steps.
        await using var engine = NewEngine(new BatchingOptions { MaxBatchSize = 4, PrefillChunkTokens = 8 });
        var statistics = requests.Select(_ => new GenerationStatistics()).ToArray();
        var streams = requests.Select((r, i) => BatchTestData.Collect(engine.GenerateAsync(r, statistics[i]))).ToArray();
        var actual = await Task.WhenAll(streams).WaitAsync(Limit);

        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i], actual[i]);
            Assert.Equal(requests[i].PromptIds.Count, statistics[i].PromptTokens);
        }

        Assert.Equal(FinishReason.Stop, statistics[4].FinishReason);
        Assert.Equal(FinishReason.Length, statistics[0].FinishReason);
        var snapshot = engine.Snapshot();
        var generated = statistics.Sum(s => s.GeneratedTokens);
        Assert.Equal(generated, snapshot.GeneratedTokens);
        Assert.Equal(requests.Sum(r => r.PromptIds.Count), snapshot.PromptTokens);
        Assert.Equal(0, snapshot.RunningSequences);

        // One at a time needs a step per token; sharing steps needs far fewer.
        Assert.True(snapshot.Steps < generated, $"{snapshot.Steps} steps for {generated} tokens");
    }

    [Fact]
    public async Task ARequestJoinsARunningBatchAndALeavingOneFreesItsSlot()
    {
        var prompts = BatchTestData.Prompts(_reference);
        await using var engine = NewEngine(new BatchingOptions { MaxBatchSize = 2 });
        var longRequest = BatchTestData.Greedy(prompts[0], engine.ContextTokens - prompts[0].Length);
        var joining = BatchTestData.Sampled(prompts[2], 10, seed: 21);
        var expectedJoining = BatchTestData.OneAtATime(_loaded.Model, _tokenizer, [joining])[0];

        using var cancellation = new CancellationTokenSource();
        var longStatistics = new GenerationStatistics();
        var early = new List<GeneratedToken>();
        var longStream = engine.GenerateAsync(longRequest, longStatistics, cancellation.Token).GetAsyncEnumerator();
        for (var i = 0; i < 3; i++)
        {
            Assert.True(await longStream.MoveNextAsync().AsTask().WaitAsync(Limit));
            early.Add(longStream.Current);
        }

        // The second request runs to its end while the first (thousands of tokens to go) keeps decoding beside it.
        Assert.Equal(expectedJoining, await BatchTestData.Collect(engine.GenerateAsync(joining)).WaitAsync(Limit));
        Assert.Equal(1, engine.Snapshot().RunningSequences);

        // The first one's consumer goes away: the sequence leaves at the next token boundary.
        await cancellation.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            while (await longStream.MoveNextAsync())
            {
            }
        });
        await longStream.DisposeAsync();
        await WaitUntil(() => engine.Snapshot().RunningSequences == 0);

        Assert.Equal(FinishReason.Cancelled, longStatistics.FinishReason);
        Assert.True(longStatistics.GeneratedTokens < longRequest.MaxTokens);
        Assert.Equal(_reference.GreedyTokens[..3], early.Select(t => t.Id));
    }

    [Fact]
    public async Task AFullQueueTurnsRequestsAwayAndACancelledOneGivesItsSlotToTheNext()
    {
        var prompts = BatchTestData.Prompts(_reference);
        await using var engine = NewEngine(new BatchingOptions { MaxBatchSize = 1, MaxQueuedRequests = 1 });
        var endless = BatchTestData.Greedy(prompts[0], engine.ContextTokens - prompts[0].Length);
        var waiting = BatchTestData.Greedy(prompts[1], 5);
        var expectedWaiting = BatchTestData.OneAtATime(_loaded.Model, _tokenizer, [waiting])[0];

        using var cancellation = new CancellationTokenSource();
        var running = engine.GenerateAsync(endless, cancellationToken: cancellation.Token).GetAsyncEnumerator();
        Assert.True(await running.MoveNextAsync().AsTask().WaitAsync(Limit));

        // One slot, taken; one place in the queue, taken by the next request; the one after is turned away.
        var queued = BatchTestData.Collect(engine.GenerateAsync(waiting));
        await WaitUntil(() => engine.Snapshot().QueuedRequests == 1);
        var refused = await Assert.ThrowsAsync<BatchingQueueFullException>(() => BatchTestData.Collect(engine.GenerateAsync(waiting)));
        Assert.Equal(1, refused.QueuedRequests);
        Assert.False(queued.IsCompleted);

        // The running request is cancelled: the queued one gets the slot and runs as it would alone.
        await cancellation.CancelAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await running.MoveNextAsync());
        await running.DisposeAsync();
        Assert.Equal(expectedWaiting, await queued.WaitAsync(Limit));
        Assert.True(engine.Snapshot().GeneratedTokens < endless.MaxTokens);
    }

    [Fact]
    public async Task APromptThatExtendsAFinishedSequenceReusesItsCache()
    {
        await using var engine = NewEngine(new BatchingOptions());
        var prompt = _reference.PromptIds;
        var first = BatchTestData.Greedy(prompt, 8);
        var firstTokens = await BatchTestData.Collect(engine.GenerateAsync(first)).WaitAsync(Limit);

        // The same prompt again: all but its last token come from the cache.
        var again = await BatchTestData.Collect(engine.GenerateAsync(first)).WaitAsync(Limit);
        Assert.Equal(firstTokens, again);

        // A follow-up turn: the prompt, four generated tokens and one new token. The cache holds all of them but the new one.
        int[] followUp = [.. prompt, .. firstTokens[..4].Select(t => t.Id), 7];
        var next = BatchTestData.Sampled(followUp, 10, seed: 2);
        var expectedNext = BatchTestData.OneAtATime(_loaded.Model, _tokenizer, [next])[0];
        Assert.Equal(expectedNext, await BatchTestData.Collect(engine.GenerateAsync(next)).WaitAsync(Limit));

        var snapshot = engine.Snapshot();
        Assert.Equal(2, snapshot.PromptCacheHits);
        Assert.Equal(1, snapshot.PromptCacheMisses);
        Assert.Equal((prompt.Length - 1) + (prompt.Length + 4), snapshot.PromptCacheHitTokens);
        Assert.Equal(firstTokens.Select(t => t.Id), _reference.GreedyTokens[..8]);
    }

    [Fact]
    public async Task BadRequestsFailWithClearErrors()
    {
        await using var engine = NewEngine(new BatchingOptions { MaxContextTokens = 64 });
        var tooLong = Assert.Throws<ArgumentException>(() => engine.GenerateAsync(BatchTestData.Greedy(_reference.PromptIds, 60)));
        Assert.Contains("more than the context of 64", tooLong.Message);

        var outside = BatchTestData.Greedy([1, _loaded.Model.Config.VocabularySize], 4);
        Assert.Contains("outside the vocabulary", Assert.Throws<ArgumentException>(() => engine.GenerateAsync(outside)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => NewEngine(new BatchingOptions { MaxContextTokens = 1 << 20 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => new BatchingOptions { MaxBatchSize = 0 }.Validate());

        // max_tokens 0 produces nothing, as TextGenerator does.
        Assert.Empty(await BatchTestData.Collect(engine.GenerateAsync(BatchTestData.Greedy(_reference.PromptIds, 0))));
    }

    [Fact]
    public async Task DisposingTheEngineEndsTheStreamsStillRunning()
    {
        var engine = NewEngine(new BatchingOptions());
        var endless = BatchTestData.Greedy(_reference.PromptIds, engine.ContextTokens - _reference.PromptIds.Length);
        var stream = engine.GenerateAsync(endless).GetAsyncEnumerator();
        Assert.True(await stream.MoveNextAsync().AsTask().WaitAsync(Limit));

        await engine.DisposeAsync().AsTask().WaitAsync(Limit);
        await Assert.ThrowsAsync<ObjectDisposedException>(async () =>
        {
            while (await stream.MoveNextAsync())
            {
            }
        });
        await stream.DisposeAsync();
        Assert.Throws<ObjectDisposedException>(() => engine.GenerateAsync(endless));
    }

    private BatchingEngine NewEngine(BatchingOptions options) => new(_loaded.Model, _tokenizer, new HashSet<int>(), options);

    private static async Task WaitUntil(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Limit;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "The engine did not reach the expected state in time.");
            await Task.Delay(5);
        }
    }
}
