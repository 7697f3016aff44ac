namespace Granary.Models.Batching;

/// <summary>
/// The KV caches of recently finished sequences with the tokens they hold, least recently used evicted first. A new
/// prompt that shares a prefix with one of them starts from that prefix instead of an empty cache. Used by the
/// engine's loop thread only.
/// </summary>
internal sealed class PromptCache(IBatchRunner runner, int capacity) : IDisposable
{
    private readonly LinkedList<Entry> _entries = [];

    public int Count => _entries.Count;

    /// <summary>
    /// A new cache of <paramref name="capacity"/> tokens for <paramref name="prompt"/>, holding the longest prefix of
    /// it a kept cache has (never the whole prompt: its last token must run to give logits). The prefix is copied and
    /// the kept cache stays, so requests running at the same time can all start from one system prompt.
    /// <paramref name="reused"/> = the prefix length (0: nothing matched).
    /// </summary>
    public KvCache Acquire(ReadOnlySpan<int> prompt, int capacity, out int reused)
    {
        LinkedListNode<Entry>? best = null;
        var bestLength = 0;
        for (var node = _entries.First; node is not null; node = node.Next)
        {
            var common = prompt[..^1].CommonPrefixLength(node.Value.Tokens);
            if (common > bestLength)
            {
                (best, bestLength) = (node, common);
            }
        }

        reused = bestLength;
        var cache = runner.CreateCache(capacity);
        if (best is null)
        {
            return cache;
        }

        _entries.Remove(best);
        _entries.AddFirst(best);
        try
        {
            runner.CopyPrefix(best.Value.Cache, cache, bestLength);
            return cache;
        }
        catch
        {
            runner.Release(cache);
            throw;
        }
    }

    /// <summary>
    /// Keeps <paramref name="cache"/>, which holds <paramref name="tokens"/>, as the most recent entry (or disposes it
    /// when the prompt cache is off); entries it extends are dropped, the least recent ones beyond capacity evicted.
    /// </summary>
    public void Add(int[] tokens, KvCache cache)
    {
        if (capacity == 0 || tokens.Length == 0)
        {
            runner.Release(cache);
            return;
        }

        for (var node = _entries.First; node is not null;)
        {
            var next = node.Next;
            if (tokens.AsSpan().StartsWith(node.Value.Tokens))
            {
                _entries.Remove(node);
                runner.Release(node.Value.Cache);
            }

            node = next;
        }

        _entries.AddFirst(new Entry(tokens, cache));
        while (_entries.Count > capacity)
        {
            var last = _entries.Last!;
            _entries.RemoveLast();
            runner.Release(last.Value.Cache);
        }
    }

    public void Dispose()
    {
        foreach (var entry in _entries)
        {
            runner.Release(entry.Cache);
        }

        _entries.Clear();
    }

    private sealed record Entry(int[] Tokens, KvCache Cache);
}
