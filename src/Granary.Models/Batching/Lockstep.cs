using System.Runtime.InteropServices;
using Granary.Collectives;
using Granary.Models.Generation;

namespace Granary.Models.Batching;

/// <summary>
/// The messages by which the leader of a split model tells the other ranks what to run. Every rank must run the same
/// forward passes on the same KV caches in the same order, because each pass's collectives join all of them; the
/// leader (world rank 0, the one with the batching engine) therefore broadcasts, before each pass, the cache changes
/// since the last one and the pass itself. A message is a frame of <see cref="FrameInts"/> ints, [op ints, ops...];
/// a longer run of ops goes on in a second broadcast.
/// </summary>
internal static class LockstepMessages
{
    /// <summary>[op, slot, capacity]</summary>
    public const int CreateCache = 1;

    /// <summary>[op, destination slot, source slot, length]</summary>
    public const int CopyPrefix = 2;

    /// <summary>[op, slot]</summary>
    public const int ReleaseCache = 3;

    /// <summary>[op, sequences, then per sequence: slot, needs logits (0/1), token count, token ids...]; always last.</summary>
    public const int Forward = 4;

    /// <summary>[op]: the leader is done; always last.</summary>
    public const int End = 5;

    // A decode step of a batch of up to ~60 sequences fits one frame, so it costs one broadcast.
    public const int FrameInts = 256;
}

/// <summary>
/// The leader's runner: it applies each cache change and pass here and sends it to the other ranks first. Sampling
/// happens here alone, from the full logits every rank ends a pass with, so each sequence's sampler and history live
/// in one place. While idle the engine calls <see cref="Pulse"/>, which keeps the followers (blocked on the next
/// message, under the group's timeout) waiting and tells them of a leader that is gone within that timeout.
/// </summary>
internal sealed class LockstepBatchLeader : IBatchRunner
{
    private readonly CausalLanguageModel _model;
    private readonly Group _world;
    private readonly Dictionary<KvCache, int> _slots = new(ReferenceEqualityComparer.Instance);
    private readonly List<int> _pending = [];
    private readonly int[] _frame = new int[LockstepMessages.FrameInts];
    private float[] _logits = [];
    private int _nextSlot;
    private bool _broken;

    public LockstepBatchLeader(CausalLanguageModel model, Group world, TimeSpan pulseInterval)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(world);
        if (world.Rank != 0)
        {
            throw new ArgumentException($"The leader of a lockstep group is world rank 0; this process is rank {world.Rank}.", nameof(world));
        }

        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(pulseInterval, TimeSpan.Zero);
        _model = model;
        _world = world;
        PulseInterval = pulseInterval;
    }

    public TimeSpan PulseInterval { get; }

    public KvCache CreateCache(int capacity)
    {
        var cache = _model.CreateCache(capacity);
        var slot = _nextSlot++;
        _slots.Add(cache, slot);
        _pending.AddRange([LockstepMessages.CreateCache, slot, capacity]);
        return cache;
    }

    public void CopyPrefix(KvCache source, KvCache destination, int length)
    {
        destination.CopyFrom(source, length);
        _pending.AddRange([LockstepMessages.CopyPrefix, _slots[destination], _slots[source], length]);
    }

    public void Release(KvCache cache)
    {
        if (_slots.Remove(cache, out var slot))
        {
            _pending.AddRange([LockstepMessages.ReleaseCache, slot]);
        }

        cache.Dispose();
    }

    public void Forward(ReadOnlySpan<BatchedSequence> batch, BatchTokenSampler sampler, Span<int> tokens)
    {
        if (tokens.Length != batch.Length)
        {
            throw new ArgumentException($"Token buffer holds {tokens.Length} ids for {batch.Length} sequences.", nameof(tokens));
        }

        _pending.AddRange([LockstepMessages.Forward, batch.Length]);
        foreach (var sequence in batch)
        {
            _pending.AddRange([_slots[sequence.Cache], sequence.NeedsLogits ? 1 : 0, sequence.Ids.Length]);
            _pending.AddRange(sequence.Ids.Span);
        }

        Send();
        var vocabulary = _model.Config.VocabularySize;
        if (_logits.Length < batch.Length * vocabulary)
        {
            _logits = new float[batch.Length * vocabulary];
        }

        var logits = _logits.AsSpan(0, batch.Length * vocabulary);
        try
        {
            _model.ForwardBatch(batch, logits);
        }
        catch (CollectiveException)
        {
            _broken = true;
            throw;
        }

        for (var i = 0; i < batch.Length; i++)
        {
            tokens[i] = batch[i].NeedsLogits ? sampler(i, logits.Slice(i * vocabulary, vocabulary)) : GeneratedToken.NoToken;
        }
    }

    public void Pulse() => Send();

    /// <summary>Tells the followers the leader is done (when the group still works) and frees the caches left.</summary>
    public void Dispose()
    {
        if (!_broken)
        {
            _pending.Add(LockstepMessages.End);
            try
            {
                Send();
            }
            catch (Exception e) when (e is CollectiveException or ObjectDisposedException)
            {
                // Followers that are gone need no goodbye.
            }
        }

        foreach (var cache in _slots.Keys)
        {
            cache.Dispose();
        }

        _slots.Clear();
    }

    private void Send()
    {
        var ops = CollectionsMarshal.AsSpan(_pending);
        var inFrame = Math.Min(ops.Length, LockstepMessages.FrameInts - 1);
        _frame[0] = ops.Length;
        ops[..inFrame].CopyTo(_frame.AsSpan(1));
        try
        {
            _world.Broadcast<int>(_frame, root: 0);
            if (ops.Length > inFrame)
            {
                _world.Broadcast(ops[inFrame..], root: 0);
            }
        }
        catch
        {
            _broken = true;
            throw;
        }
        finally
        {
            _pending.Clear();
        }
    }
}

/// <summary>
/// The other ranks' side of a split model served by a batching engine on world rank 0
/// (<see cref="BatchingEngine.CreateLockstepLeader"/>): run the cache changes and forward passes the leader sends.
/// </summary>
public static class LockstepFollower
{
    /// <summary>
    /// Follows the leader on the calling thread until it ends. A leader that is gone, or silent for longer than the
    /// group's timeout, fails this with <see cref="CollectiveException"/>; so does a message this rank cannot run.
    /// </summary>
    public static void Follow(CausalLanguageModel model, Group world)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(world);
        var frame = new int[LockstepMessages.FrameInts];
        var ops = new int[LockstepMessages.FrameInts];
        var caches = new Dictionary<int, KvCache>();
        var batch = new BatchedSequence[16];
        var logits = Array.Empty<float>();
        try
        {
            while (true)
            {
                world.Broadcast<int>(frame, root: 0);
                var length = frame[0];
                if (length < 0)
                {
                    throw Malformed($"a message of {length} ints");
                }

                if (ops.Length < length)
                {
                    ops = new int[Math.Max(length, ops.Length * 2)];
                }

                var inFrame = Math.Min(length, LockstepMessages.FrameInts - 1);
                frame.AsSpan(1, inFrame).CopyTo(ops);
                if (length > inFrame)
                {
                    world.Broadcast(ops.AsSpan(inFrame, length - inFrame), root: 0);
                }

                for (var at = 0; at < length;)
                {
                    switch (ops[at])
                    {
                        case LockstepMessages.CreateCache:
                            caches.Add(ops[at + 1], model.CreateCache(ops[at + 2]));
                            at += 3;
                            break;
                        case LockstepMessages.CopyPrefix:
                            Cache(caches, ops[at + 1]).CopyFrom(Cache(caches, ops[at + 2]), ops[at + 3]);
                            at += 4;
                            break;
                        case LockstepMessages.ReleaseCache:
                            if (caches.Remove(ops[at + 1], out var released))
                            {
                                released.Dispose();
                            }

                            at += 2;
                            break;
                        case LockstepMessages.Forward:
                            var count = ops[at + 1];
                            at += 2;
                            if (batch.Length < count)
                            {
                                batch = new BatchedSequence[Math.Max(count, batch.Length * 2)];
                            }

                            for (var i = 0; i < count; i++)
                            {
                                var tokens = ops[at + 2];
                                batch[i] = new BatchedSequence(Cache(caches, ops[at]), ops.AsMemory(at + 3, tokens), NeedsLogits: ops[at + 1] != 0);
                                at += 3 + tokens;
                            }

                            var vocabulary = model.Config.VocabularySize;
                            if (logits.Length < count * vocabulary)
                            {
                                logits = new float[count * vocabulary];
                            }

                            model.ForwardBatch(batch.AsSpan(0, count), logits.AsSpan(0, count * vocabulary));
                            Array.Clear(batch, 0, count);
                            break;
                        case LockstepMessages.End:
                            return;
                        default:
                            throw Malformed($"op {ops[at]} at {at}");
                    }
                }
            }
        }
        finally
        {
            foreach (var cache in caches.Values)
            {
                cache.Dispose();
            }
        }
    }

    private static KvCache Cache(Dictionary<int, KvCache> caches, int slot) =>
        caches.TryGetValue(slot, out var cache) ? cache : throw Malformed($"KV cache slot {slot}, which the leader never created");

    private static CollectiveException Malformed(string what) =>
        new($"The leader sent {what}, which this follower cannot run; leader and follower must run the same Granary version.", peerRank: 0, operation: "Lockstep");
}
