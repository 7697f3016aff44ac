namespace Granary.Models.Batching;

/// <summary>
/// Where the batching engine's forward passes and KV-cache changes happen: on this process alone
/// (<see cref="LocalBatchRunner"/>), or mirrored on every rank of a split model (<see cref="LockstepBatchLeader"/>).
/// Called from the engine's loop thread only.
/// </summary>
internal interface IBatchRunner : IDisposable
{
    /// <summary>How long the loop may wait for work before it must call <see cref="Pulse"/>; infinite when never.</summary>
    TimeSpan PulseInterval { get; }

    KvCache CreateCache(int capacity);

    /// <summary>Makes <paramref name="destination"/> hold the first <paramref name="length"/> tokens of <paramref name="source"/>.</summary>
    void CopyPrefix(KvCache source, KvCache destination, int length);

    void Release(KvCache cache);

    /// <summary>One batched pass ending in token ids, as <see cref="CausalLanguageModel.ForwardBatch(ReadOnlySpan{BatchedSequence}, BatchTokenSampler, Span{int})"/>.</summary>
    void Forward(ReadOnlySpan<BatchedSequence> batch, BatchTokenSampler sampler, Span<int> tokens);

    /// <summary>Called while idle, at least every <see cref="PulseInterval"/>.</summary>
    void Pulse();
}

/// <summary>A whole model on this process: every call goes straight to the model.</summary>
internal sealed class LocalBatchRunner(CausalLanguageModel model) : IBatchRunner
{
    public TimeSpan PulseInterval => Timeout.InfiniteTimeSpan;

    public KvCache CreateCache(int capacity) => model.CreateCache(capacity);

    public void CopyPrefix(KvCache source, KvCache destination, int length) => destination.CopyFrom(source, length);

    public void Release(KvCache cache) => cache.Dispose();

    public void Forward(ReadOnlySpan<BatchedSequence> batch, BatchTokenSampler sampler, Span<int> tokens) =>
        model.ForwardBatch(batch, sampler, tokens);

    public void Pulse()
    {
    }

    public void Dispose()
    {
    }
}
