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
/// A shard's loaded weights in the model host, and the generations that run on them. Generations of a whole model
/// share one continuous-batching engine; those of a split model run one at a time in lock step with the plan's other
/// shards. A shard of a split model also holds its plan's data-plane group; once that group fails the shard is useless
/// and must be loaded again.
/// </summary>
public sealed class HostedShard
{
    // Split models: one generation at a time. Whole models: many readers (generations in the batch), and Release
    // takes the write side so the weights outlive every generation using them.
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly ReaderWriterLockSlim _inUse = new();
    private readonly BatchingEngine? _engine;
    private readonly long _weightBytes;
    private readonly ShardGroups? _groups;
    private bool _released;
    private volatile string? _groupFailure;

    internal HostedShard(
        ShardAssignment assignment, LoadedModel model, DateTimeOffset loadedAt, TimeSpan loadTime, ShardGroups? groups = null, BatchingOptions? batching = null)
    {
        Assignment = assignment;
        Model = model;
        LoadedAt = loadedAt;
        LoadTime = loadTime;
        _groups = groups;
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
            ? new BatchState(batch.RunningSequences, batch.QueuedRequests, batch.LastBatchSize, batch.PromptCacheHits, batch.PromptCacheMisses, batch.PromptCacheHitTokens)
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
        if (_groups is { } groups)
        {
            _gate.Wait(cancellationToken);
            try
            {
                ThrowIfReleased();
                RunInGroup(() => Lockstep.Lead(Model, groups.World, request, Sampling(request.Job.Sampling, Model.Generation), work, emit, cancellationToken));
            }
            finally
            {
                _gate.Release();
            }

            return;
        }

        _inUse.EnterReadLock();
        try
        {
            ThrowIfReleased();
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
            foreach (var token in _engine!.GenerateAsync(engineRequest, statistics, cancellationToken).ToBlockingEnumerable(cancellationToken))
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
        finally
        {
            _inUse.ExitReadLock();
        }
    }

    private void ThrowIfReleased()
    {
        if (_released)
        {
            // Unloaded while this request waited: to the coordinator that is a lost shard, so it re-plans.
            throw new ShardNotLoadedException(Assignment.Shard.ToGrainKey());
        }
    }

    /// <summary>
    /// A follower's part of one generation of a split model: runs the forward passes the leader broadcasts until it
    /// ends the generation. Generations on a shard run one at a time, in the order the leader runs them.
    /// </summary>
    internal void Follow(RunningWork work)
    {
        var groups = _groups ?? throw new InvalidOperationException($"Shard {Assignment.Shard} holds a whole model; only shards of a split model follow a leader.");
        _gate.Wait();
        try
        {
            ThrowIfReleased();
            RunInGroup(() => Lockstep.Follow(Model.Model, groups.World, work));
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Runs collective work; a failed group fails this shard for good (as a serializable error the coordinator understands).</summary>
    private void RunInGroup(Action work)
    {
        if (_groupFailure is { } failure)
        {
            throw new ShardGroupException(Assignment.Shard.ToGrainKey(), failure);
        }

        try
        {
            work();
        }
        catch (CollectiveException e)
        {
            _groupFailure = $"The data-plane group of shard {Assignment.Shard} (plan {Assignment.PlanVersion}) failed: {e.Message}";
            // Closing the group's connections tells peers still blocked on this shard at once.
            _groups!.Break();
            throw new ShardGroupException(Assignment.Shard.ToGrainKey(), _groupFailure);
        }
    }

    /// <summary>Frees the weights (and the data-plane group) once no generation is using them.</summary>
    internal void Release()
    {
        _gate.Wait();
        _inUse.EnterWriteLock();
        try
        {
            if (!_released)
            {
                _released = true;
                _engine?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                Model.Dispose();
                _groups?.Dispose();
            }
        }
        finally
        {
            _inUse.ExitWriteLock();
            _gate.Release();
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
