using Granary.Abstractions;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.Batching;
using Granary.Models.Configuration;
using Granary.Models.Generation;
using Granary.Models.Tokenization;
using FinishReason = Granary.Abstractions.FinishReason;

namespace Granary.Grains;

/// <summary>
/// A shard's loaded weights in the model host, and the generations that run on them. Generations share one
/// continuous-batching engine: a whole model's, or for a split model the one on its plan's leader (world rank 0),
/// whose every batched step the plan's other shards follow over the data plane. A shard of a split model also holds
/// its plan's data-plane group; once that group fails the shard is useless and must be loaded again.
/// </summary>
public sealed class HostedShard
{
    // Many readers (generations in the batch); Release takes the write side so the weights outlive every generation.
    private readonly ReaderWriterLockSlim _inUse = new();
    private readonly Lock _starting = new();
    private readonly BatchingOptions? _batching;
    private readonly long _weightBytes;
    private readonly ShardGroups? _groups;
    private volatile BatchingEngine? _engine;
    private Thread? _follower;
    private volatile bool _released;
    private bool _freed;
    private volatile string? _groupFailure;

    internal HostedShard(
        ShardAssignment assignment, LoadedModel model, DateTimeOffset loadedAt, TimeSpan loadTime, ShardGroups? groups = null, BatchingOptions? batching = null)
    {
        Assignment = assignment;
        Model = model;
        LoadedAt = loadedAt;
        LoadTime = loadTime;
        _groups = groups;
        _batching = batching;
        _engine = groups is null ? BatchingEngine.Create(model, batching) : null;
        _weightBytes = groups is null
            ? Directory.EnumerateFiles(model.Directory, "*.safetensors").Sum(path => new FileInfo(path).Length)
            : model.Model.WeightBytesHeld;
    }

    /// <summary>The data-plane group of the plan this shard of a split model belongs to; null for a whole model.</summary>
    public ShardGroup? Group => _groups?.Setup;

    /// <summary>The assignment of the latest plan that uses this shard.</summary>
    public ShardAssignment Assignment { get; internal set; }

    public LoadedModel Model { get; }

    public DateTimeOffset LoadedAt { get; }

    public TimeSpan LoadTime { get; }

    /// <summary>Bytes of weights this shard holds: the checkpoint files of a whole model, its share of a split one.</summary>
    public long WeightBytes => _weightBytes;

    public ShardStatus ToStatus() => new(
        Assignment,
        Model.Directory,
        WeightBytes,
        LoadedAt,
        LoadTime,
        _engine?.Snapshot() is { } batch
            ? new BatchState(
                batch.RunningSequences, batch.QueuedRequests, batch.LastBatchSize, batch.PromptCacheHits, batch.PromptCacheMisses, batch.PromptCacheHitTokens, batch.Steps, batch.GeneratedTokens)
            : null);

    /// <summary>Whether the weights held serve <paramref name="assignment"/> (same layers and tensor split).</summary>
    internal bool Covers(ShardAssignment assignment, ShardGroup? group) =>
        group?.GroupId == Group?.GroupId
        && _groupFailure is null
        && assignment.FirstLayer == Assignment.FirstLayer
        && assignment.LayerCount == Assignment.LayerCount
        && assignment.TensorRank == Assignment.TensorRank
        && assignment.TensorGroupSize == Assignment.TensorGroupSize;

    /// <summary>The prompt as token ids: text and conversations go through the model's chat format.</summary>
    public int[] Encode(Prompt prompt)
    {
        prompt.Validate();
        if (prompt.TokenIds is { } ids)
        {
            return ids;
        }

        var tokenizer = Model.Tokenizer
            ?? throw new InvalidOperationException($"The model in '{Model.Directory}' has no tokenizer.json; send token ids.");
        var messages = new List<ChatMessage>();
        if (prompt.Messages is { } turns)
        {
            if (!tokenizer.HasChatTemplate)
            {
                throw new InvalidOperationException($"The model in '{Model.Directory}' has no chat format; send text or token ids.");
            }

            messages.AddRange(turns.Select(turn => new ChatMessage(turn.Role, turn.Content)));
            return [.. tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false)];
        }

        if (!prompt.UseChatTemplate || !tokenizer.HasChatTemplate)
        {
            return [.. tokenizer.Encode(prompt.Text!, addSpecialTokens: true)];
        }

        if (prompt.System is not null)
        {
            messages.Add(new ChatMessage("system", prompt.System));
        }

        messages.Add(new ChatMessage("user", prompt.Text!));
        return [.. tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false)];
    }

    /// <summary>
    /// Runs one generation to the end on the calling thread, handing each chunk to <paramref name="emit"/>.
    /// Tokens produced before a failover are replayed as part of the prompt and count towards max_tokens.
    /// </summary>
    internal void Generate(ShardGenerationRequest request, RunningWork work, Action<TokenChunk> emit, CancellationToken cancellationToken)
    {
        _inUse.EnterReadLock();
        try
        {
            ThrowIfReleased();
            ThrowIfGroupFailed();
            var engine = _engine ?? throw new ShardNotLoadedException(
                $"{Assignment.Shard.ToGrainKey()} (plan {Assignment.PlanVersion}: {(_groups?.World.Rank > 0 ? "a follower, not the leader" : "not started")})");
            var job = request.Job;
            var engineRequest = new GenerationRequest
            {
                PromptIds = [.. request.PromptIds, .. request.ProducedIds],
                MaxTokens = Math.Max(0, job.MaxTokens - request.ProducedIds.Length),
                Sampling = Sampling(job.Sampling, Model.Generation),
                StopStrings = job.StopStrings,
                StopAtEndOfSequence = job.StopAtEndOfSequence,
            };
            var statistics = new GenerationStatistics();
            foreach (var token in engine.GenerateAsync(engineRequest, statistics, cancellationToken).ToBlockingEnumerable(cancellationToken))
            {
                if (token.HasToken)
                {
                    work.CountToken();
                }

                emit(new TokenChunk(token.HasToken ? token.Id : TokenChunk.NoToken, token.Text));
            }

            emit(new TokenChunk(TokenChunk.NoToken, "", new GenerationSummary(
                request.PromptIds.Length,
                request.ProducedIds.Length + statistics.GeneratedTokens,
                statistics.PromptTokensPerSecond,
                statistics.GenerationTokensPerSecond,
                statistics.FinishReason == Models.Generation.FinishReason.Stop ? FinishReason.Stop : FinishReason.Length,
                0)));
        }
        catch (Exception e) when (_groups is not null && (e is CollectiveException || e.InnerException is CollectiveException))
        {
            // The engine reports a failed group on the requests it was running and refuses later ones with it.
            throw FailGroup((e as CollectiveException ?? e.InnerException)!.Message);
        }
        finally
        {
            _inUse.ExitReadLock();
        }
    }

    /// <summary>
    /// Starts serving a split model once every shard of its plan has loaded (before that, the followers would wait on
    /// a leader still loading, and time out): world rank 0 starts the batching engine, the others follow it on a
    /// thread of their own. <paramref name="followerFailed"/> hears why a follower stopped early. Idempotent.
    /// </summary>
    internal void StartServing(Action<Exception> followerFailed)
    {
        var groups = _groups ?? throw new InvalidOperationException($"Shard {Assignment.Shard} holds a whole model, which serves from the time it loads.");
        lock (_starting)
        {
            ThrowIfReleased();
            ThrowIfGroupFailed();
            if (_engine is not null || _follower is not null)
            {
                return;
            }

            if (groups.World.Rank == 0)
            {
                // Pulses well within the group's timeout keep idle followers waiting.
                _engine = BatchingEngine.CreateLockstepLeader(Model, groups.World, groups.Setup.Timeout / 4, _batching);
                return;
            }

            _follower = new Thread(() => Follow(groups, followerFailed)) { IsBackground = true, Name = $"follower of {Assignment.Shard}" };
            _follower.Start();
        }
    }

    private void Follow(ShardGroups groups, Action<Exception> followerFailed)
    {
        try
        {
            LockstepFollower.Follow(Model.Model, groups.World);
        }
        catch (Exception e) when (!_released)
        {
            FailGroup(e.Message);
            followerFailed(e);
        }
        catch (Exception) when (_released)
        {
            // Unloading closed the group under the follower.
        }
    }

    private void ThrowIfGroupFailed()
    {
        if (_groupFailure is { } failure)
        {
            throw new ShardGroupException(Assignment.Shard.ToGrainKey(), failure);
        }
    }

    /// <summary>A failed group fails this shard for good (as a serializable error the coordinator understands).</summary>
    private ShardGroupException FailGroup(string reason)
    {
        _groupFailure ??= $"The data-plane group of shard {Assignment.Shard} (plan {Assignment.PlanVersion}) failed: {reason}";
        // Closing the group's connections tells peers still blocked on this shard at once.
        _groups!.Break();
        return new ShardGroupException(Assignment.Shard.ToGrainKey(), _groupFailure);
    }

    private void ThrowIfReleased()
    {
        if (_released)
        {
            // Unloaded while this request waited: to the coordinator that is a lost shard, so it re-plans.
            throw new ShardNotLoadedException(Assignment.Shard.ToGrainKey());
        }
    }

    /// <summary>Frees the weights (and the data-plane group) once no generation is using them.</summary>
    internal void Release()
    {
        _released = true;
        if (_follower is { } follower)
        {
            // A follower waits on its leader; closing the group ends the wait at once.
            _groups!.Break();
            follower.Join();
        }

        _inUse.EnterWriteLock();
        try
        {
            if (!_freed)
            {
                _freed = true;
                _engine?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                Model.Dispose();
                _groups?.Dispose();
            }
        }
        finally
        {
            _inUse.ExitWriteLock();
        }
    }

    private static SamplingOptions Sampling(SamplingSettings settings, GenerationConfig defaults) => new()
    {
        Temperature = settings.Temperature ?? (defaults.DoSample ? defaults.Temperature : 0f),
        TopP = settings.TopP ?? defaults.TopP,
        TopK = settings.TopK ?? defaults.TopK,
        MinP = settings.MinP ?? defaults.MinP,
        RepetitionPenalty = settings.RepetitionPenalty ?? defaults.RepetitionPenalty,
        RepetitionContextSize = settings.RepetitionContextSize,
        Seed = settings.Seed,
    };
}

/// <summary>The groups a shard of a split model runs in: its plan's world group and the tensor and pipeline groups split from it.</summary>
internal sealed class ShardGroups(ShardGroup setup, Group world, Group? tensor, Group? pipeline) : IDisposable
{
    public ShardGroup Setup { get; } = setup;

    public Group World { get; } = world;

    public Group? Tensor { get; } = tensor;

    public Group? Pipeline { get; } = pipeline;

    /// <summary>Closes every connection so that peers waiting on this shard fail now rather than at their timeout.</summary>
    public void Break() => Dispose();

    private int _disposed;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        foreach (var group in new[] { Tensor, Pipeline }.OfType<Group>().Where(group => !ReferenceEquals(group, World)).Distinct())
        {
            group.Dispose();
        }

        World.Dispose();
    }
}
