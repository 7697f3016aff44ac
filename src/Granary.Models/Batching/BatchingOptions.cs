using Granary.Models.Configuration;

namespace Granary.Models.Batching;

/// <summary>Limits of a <see cref="BatchingEngine"/>: how many sequences decode together, how prompts are fed, what is kept.</summary>
public sealed class BatchingOptions
{
    /// <summary>The context a default engine allows when the model's own is longer: caches are sized per request, up to this.</summary>
    public const int DefaultContextCap = 8192;

    /// <summary>Sequences in the running batch at most; more wait in the queue. Default 16.</summary>
    public int MaxBatchSize { get; set; } = 16;

    /// <summary>
    /// Prompt tokens run per step at most (across the sequences still prefilling), so a long prompt is fed in chunks
    /// between decode steps instead of stalling the others. Default 256.
    /// </summary>
    public int PrefillChunkTokens { get; set; } = 256;

    /// <summary>Requests waiting for a batch slot at most; one more gets <see cref="BatchingQueueFullException"/>. Default 256.</summary>
    public int MaxQueuedRequests { get; set; } = 256;

    /// <summary>Caches of finished sequences kept for prompts that share their prefix (0 turns the prompt cache off). Default 8.</summary>
    public int PromptCacheEntries { get; set; } = 8;

    /// <summary>
    /// Prompt plus max_tokens of one request at most; 0 takes the model's max_position_embeddings, capped at
    /// <see cref="DefaultContextCap"/>.
    /// </summary>
    public int MaxContextTokens { get; set; }

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the first value out of range.</summary>
    public void Validate()
    {
        if (MaxBatchSize < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxBatchSize), MaxBatchSize, "The batch must hold at least one sequence.");
        }

        if (PrefillChunkTokens < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(PrefillChunkTokens), PrefillChunkTokens, "At least one prompt token must run per step.");
        }

        if (MaxQueuedRequests < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxQueuedRequests), MaxQueuedRequests, "The queue length must be >= 0.");
        }

        if (PromptCacheEntries < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(PromptCacheEntries), PromptCacheEntries, "The prompt cache size must be >= 0.");
        }

        if (MaxContextTokens < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(MaxContextTokens), MaxContextTokens, "The context must be >= 0 tokens (0 = the model's).");
        }
    }

    /// <summary>The context requests get on <paramref name="config"/>'s model.</summary>
    internal int ContextTokens(ModelConfig config)
    {
        var model = config.MaxPositionEmbeddings;
        if (MaxContextTokens > model)
        {
            throw new ArgumentOutOfRangeException(
                nameof(MaxContextTokens), MaxContextTokens, $"The model's context holds {model} tokens.");
        }

        return MaxContextTokens > 0 ? MaxContextTokens : Math.Min(model, DefaultContextCap);
    }
}

/// <summary>
/// The engine's queue is full: the request was not accepted (a gateway answers 429 or 503 and the client retries later).
/// </summary>
public sealed class BatchingQueueFullException(int queuedRequests)
    : InvalidOperationException($"The generation queue is full ({queuedRequests} requests waiting); try again later.")
{
    /// <summary>Requests that were waiting when this one was turned away.</summary>
    public int QueuedRequests { get; } = queuedRequests;
}

/// <summary>
/// The engine's state at one moment: sequences decoding, requests waiting, the size of the latest step, and totals
/// since start (prompt and generated tokens, prompt-cache hits, misses and the prompt tokens hits saved, steps run).
/// </summary>
public sealed record BatchingSnapshot(
    int RunningSequences,
    int QueuedRequests,
    int LastBatchSize,
    long PromptTokens,
    long GeneratedTokens,
    long PromptCacheHits,
    long PromptCacheMisses,
    long PromptCacheHitTokens,
    long Steps);
