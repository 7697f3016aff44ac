using System.Diagnostics;
using Granary.Collectives;
using Granary.Models.Batching;
using Granary.Models.Generation;
using Granary.Models.Sharding;
using Granary.Models.Tests.Reference;
using Granary.Models.Tests.Sharding;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Batching;

/// <summary>
/// The batching engine serving a split model: rank 0's engine batches concurrent requests and every other rank
/// follows its cache changes and passes, so the whole batch moves through the shards together and each request
/// streams what it streams alone on one process.
/// </summary>
public sealed class LockstepBatchingTests
{
    private static readonly TimeSpan Limit = TimeSpan.FromSeconds(60);

    [Theory]
    [InlineData("llama", 1, 2)]
    [InlineData("qwen3_moe", 2, 1)]
    [InlineData("qwen3", 2, 2)]
    public void ConcurrentRequestsOnASplitModelStreamWhatEachStreamsAlone(string name, int stages, int tensorRanks)
    {
        var reference = ReferenceModel.Load(name);
        var prompts = BatchTestData.Prompts(reference);
        GenerationRequest[] requests =
        [
            BatchTestData.Greedy(prompts[0], 16),
            BatchTestData.Greedy(prompts[1], 6),
            BatchTestData.Sampled(prompts[2], 12, seed: 3),
            BatchTestData.Sampled(prompts[3], 9, seed: 4),
            BatchTestData.Greedy(prompts[2], 7),
        ];

        GeneratedToken[][] expected;
        int[] extended;
        GeneratedToken[] expectedExtended;
        using (var backend = new CpuBackend(threads: 1))
        using (var whole = ModelLoader.Load(reference.Directory, backend))
        {
            expected = BatchTestData.OneAtATime(whole.Model, null, requests);

            // A later prompt that extends a finished sequence starts from the copy of its cache on every rank.
            extended = [.. prompts[0], .. expected[0].Take(10).Select(t => t.Id), 3];
            expectedExtended = BatchTestData.OneAtATime(whole.Model, null, [BatchTestData.Greedy(extended, 5)])[0];
        }

        var ranks = ShardRanks.RunAll(stages, tensorRanks, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            if (groups.World.Rank != 0)
            {
                LockstepFollower.Follow(loaded.Model, groups.World);
                return null;
            }

            var engine = BatchingEngine.CreateLockstepLeader(
                loaded, groups.World, TimeSpan.FromMilliseconds(500), new BatchingOptions { MaxBatchSize = 4, PrefillChunkTokens = 8 });
            try
            {
                var streams = requests.Select(r => BatchTestData.Collect(engine.GenerateAsync(r))).ToArray();
                var first = Task.WhenAll(streams).WaitAsync(Limit).GetAwaiter().GetResult();
                var again = BatchTestData.Collect(engine.GenerateAsync(BatchTestData.Greedy(extended, 5))).WaitAsync(Limit).GetAwaiter().GetResult();
                return new LeaderResult([.. first, again], engine.Snapshot());
            }
            finally
            {
                engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        });

        var leader = ranks[0]!;
        for (var i = 0; i < requests.Length; i++)
        {
            Assert.Equal(expected[i], leader.Tokens[i]);
        }

        Assert.Equal(expectedExtended, leader.Tokens[^1]);
        Assert.True(leader.Snapshot.PromptCacheHits >= 1, "the extended prompt did not start from a cached prefix");
        var generated = leader.Tokens.Sum(tokens => tokens.Length);
        Assert.True(leader.Snapshot.Steps < generated, $"{leader.Snapshot.Steps} steps for {generated} tokens: the requests did not share steps");
    }

    [Fact]
    public void AnIdleLeaderKeepsItsFollowersAndAGoneLeaderFailsThemWithinTheTimeout()
    {
        var reference = ReferenceModel.Load("llama");
        var request = BatchTestData.Greedy(reference.PromptIds, 6);
        GeneratedToken[] expected;
        using (var backend = new CpuBackend(threads: 1))
        using (var whole = ModelLoader.Load(reference.Directory, backend))
        {
            expected = BatchTestData.OneAtATime(whole.Model, null, [request])[0];
        }

        var timeout = TimeSpan.FromSeconds(1);
        var results = ShardRanks.Run(1, 2, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            if (groups.World.Rank != 0)
            {
                LockstepFollower.Follow(loaded.Model, groups.World);
                return ((GeneratedToken[]?)null, TimeSpan.Zero);
            }

            var engine = BatchingEngine.CreateLockstepLeader(loaded, groups.World, timeout / 5);

            // Idle for over twice the group's timeout: the pulses keep the follower waiting.
            Thread.Sleep(timeout * 2.5);
            var tokens = BatchTestData.Collect(engine.GenerateAsync(request)).WaitAsync(Limit).GetAwaiter().GetResult();

            // The leader goes away without a word (its connections close, as when its process dies).
            var clock = Stopwatch.StartNew();
            groups.World.Dispose();
            return (tokens, clock.Elapsed);
        }, timeout: timeout);

        Assert.Null(results[0].Error);
        Assert.Equal(expected, results[0].Result.Item1);
        var followerError = Assert.IsType<CollectiveException>(results[1].Error);
        Assert.Contains("rank 0", followerError.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void AFollowerThatDiesFailsTheLeadersRequestsWithACollectiveError()
    {
        var reference = ReferenceModel.Load("llama");
        var results = ShardRanks.Run(1, 2, groups =>
        {
            using var backend = new CpuBackend(threads: 1);
            using var loaded = ShardedModelLoader.ShardedLoad(reference.Directory, backend, groups.Pipeline, groups.Tensor);
            if (groups.World.Rank != 0)
            {
                // The follower's process is gone: its connections close.
                groups.World.Dispose();
                return (Exception?)null;
            }

            var engine = BatchingEngine.CreateLockstepLeader(loaded, groups.World, TimeSpan.FromMilliseconds(200));
            try
            {
                var error = Record.Exception(() => BatchTestData.Collect(engine.GenerateAsync(BatchTestData.Greedy(reference.PromptIds, 50))).WaitAsync(Limit).GetAwaiter().GetResult());

                // Later requests are refused with the group's failure, not left waiting.
                Thread.Sleep(500);
                var later = Record.Exception(() => BatchTestData.Collect(engine.GenerateAsync(BatchTestData.Greedy(reference.PromptIds, 5))).WaitAsync(Limit).GetAwaiter().GetResult());
                return new AggregateException(error!, later!);
            }
            finally
            {
                engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }, timeout: TimeSpan.FromSeconds(2));

        var errors = Assert.IsType<AggregateException>(results[0].Result);
        Assert.IsType<CollectiveException>(errors.InnerExceptions[0]);
        Assert.IsType<CollectiveException>(errors.InnerExceptions[1] is InvalidOperationException refused ? refused.InnerException : errors.InnerExceptions[1]);
    }

    private sealed record LeaderResult(GeneratedToken[][] Tokens, BatchingSnapshot Snapshot);
}
