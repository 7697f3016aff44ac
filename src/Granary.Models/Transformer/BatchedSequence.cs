namespace Granary.Models;

/// <summary>
/// One sequence's share of a batched forward pass (<see cref="CausalLanguageModel.ForwardBatch(ReadOnlySpan{BatchedSequence}, Span{float})"/>):
/// new tokens that go at positions cache.Length .. cache.Length+n-1 of its own cache. A decode step gives one token,
/// a prefill chunk several.
/// </summary>
/// <param name="NeedsLogits">
/// False for a prefill chunk that does not reach the end of its prompt: its last position's logits are not computed.
/// </param>
public readonly record struct BatchedSequence(KvCache Cache, ReadOnlyMemory<int> Ids, bool NeedsLogits = true);

/// <summary>
/// Picks the next token of the sequence at <paramref name="sequence"/> (its index in the batch) from its logits, which
/// it may modify. Under pipeline parallelism it runs on the last stage only.
/// </summary>
public delegate int BatchTokenSampler(int sequence, Span<float> logits);
