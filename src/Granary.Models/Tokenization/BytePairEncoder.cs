using System.Collections.Concurrent;
using System.Text;

namespace Granary.Models.Tokenization;

/// <summary>
/// Byte-level BPE over one pre-tokenized piece: the piece's UTF-8 bytes start as single-byte tokens and the
/// lowest-ranked merge is applied first (leftmost among equals), as Hugging Face's BPE model does.
/// </summary>
internal sealed class BytePairEncoder
{
    // Bounded so that a long-running server fed endless distinct words cannot grow without limit.
    private const int MaxCachedPieces = 100_000;

    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _vocabularyBySpan;
    private readonly Dictionary<long, Merge> _merges;
    private readonly int[] _byteIds = new int[256];
    private readonly bool _ignoreMerges;
    private readonly ConcurrentDictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;
    private int _cachedCount;

    public BytePairEncoder(Dictionary<string, int> vocabulary, IEnumerable<(string Left, string Right)> merges, bool ignoreMerges, string sourceFile)
    {
        _vocabularyBySpan = vocabulary.GetAlternateLookup<ReadOnlySpan<char>>();
        _ignoreMerges = ignoreMerges;
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();

        for (var b = 0; b < 256; b++)
        {
            var symbol = ByteLevelAlphabet.ToChar((byte)b).ToString();
            if (!vocabulary.TryGetValue(symbol, out _byteIds[b]))
            {
                throw new ModelLoadException(sourceFile, "model.vocab", $"the byte-level symbol '{symbol}' for byte 0x{b:X2} is missing, so some text could not be encoded.");
            }
        }

        _merges = [];
        var rank = 0;
        foreach (var (left, right) in merges)
        {
            if (!vocabulary.TryGetValue(left, out var leftId) || !vocabulary.TryGetValue(right, out var rightId)
                || !vocabulary.TryGetValue(left + right, out var mergedId))
            {
                throw new ModelLoadException(sourceFile, "model.merges", $"merge {rank} ('{left}' '{right}') uses a token that is not in model.vocab.");
            }

            // A repeated pair keeps its first (best) rank, as in Hugging Face's loader.
            _merges.TryAdd(PairKey(leftId, rightId), new Merge(rank, mergedId));
            rank++;
        }
    }

    /// <summary>Appends the ids of one pre-tokenized piece.</summary>
    public void Encode(ReadOnlySpan<char> piece, List<int> output)
    {
        if (_cacheBySpan.TryGetValue(piece, out var cached))
        {
            output.AddRange(cached);
            return;
        }

        var ids = EncodeUncached(piece);
        // Counted here because ConcurrentDictionary.Count takes every lock; the count is approximate under races.
        if (Interlocked.Increment(ref _cachedCount) > MaxCachedPieces)
        {
            _cache.Clear();
            Interlocked.Exchange(ref _cachedCount, 0);
        }

        _cacheBySpan.TryAdd(piece, ids);
        output.AddRange(ids);
    }

    private int[] EncodeUncached(ReadOnlySpan<char> piece)
    {
        var byteCount = Encoding.UTF8.GetByteCount(piece);
        var bytes = byteCount <= 256 ? stackalloc byte[byteCount] : new byte[byteCount];
        Encoding.UTF8.GetBytes(piece, bytes);

        if (_ignoreMerges && byteCount > 1)
        {
            // Models trained with ignore_merges take a whole piece that is itself a vocabulary entry as is.
            Span<char> word = byteCount <= 256 ? stackalloc char[byteCount] : new char[byteCount];
            for (var i = 0; i < byteCount; i++)
            {
                word[i] = ByteLevelAlphabet.ToChar(bytes[i]);
            }

            if (_vocabularyBySpan.TryGetValue(word, out var wholeId))
            {
                return [wholeId];
            }
        }

        var ids = new int[byteCount];
        var next = new int[byteCount];
        var previous = new int[byteCount];
        for (var i = 0; i < byteCount; i++)
        {
            ids[i] = _byteIds[bytes[i]];
            next[i] = i + 1 < byteCount ? i + 1 : -1;
            previous[i] = i - 1;
        }

        // Entries are (position, merged id), ordered by (rank, position); stale entries are skipped when popped.
        var queue = new PriorityQueue<(int Position, int MergedId), long>();
        for (var i = 0; i + 1 < byteCount; i++)
        {
            Enqueue(queue, ids, i, i + 1);
        }

        var alive = byteCount;
        while (queue.TryDequeue(out var candidate, out _))
        {
            var position = candidate.Position;
            if (ids[position] < 0 || next[position] < 0)
            {
                continue;
            }

            var right = next[position];
            if (!_merges.TryGetValue(PairKey(ids[position], ids[right]), out var merge) || merge.MergedId != candidate.MergedId)
            {
                continue;
            }

            ids[position] = merge.MergedId;
            ids[right] = -1;
            next[position] = next[right];
            if (next[right] >= 0)
            {
                previous[next[right]] = position;
            }

            alive--;
            if (previous[position] >= 0)
            {
                Enqueue(queue, ids, previous[position], position);
            }

            if (next[position] >= 0)
            {
                Enqueue(queue, ids, position, next[position]);
            }
        }

        var result = new int[alive];
        for (int i = 0, n = 0; i >= 0; i = next[i])
        {
            result[n++] = ids[i];
        }

        return result;
    }

    private void Enqueue(PriorityQueue<(int, int), long> queue, int[] ids, int left, int right)
    {
        if (_merges.TryGetValue(PairKey(ids[left], ids[right]), out var merge))
        {
            queue.Enqueue((left, merge.MergedId), ((long)merge.Rank << 32) | (uint)left);
        }
    }

    private static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    private readonly record struct Merge(int Rank, int MergedId);
}
