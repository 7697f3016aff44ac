using System.Collections.Concurrent;
using System.Text;
using Microsoft.ML.Tokenizers;

namespace Granary.Models.Tokenization;

/// <summary>
/// Byte-level BPE over one pre-tokenized piece: the lowest-ranked merge is applied first (leftmost among equals), as
/// Hugging Face's BPE model does. Microsoft.ML.Tokenizers' <see cref="BpeTokenizer"/> does the merging; this class adds
/// what that library lacks: ignore_merges, a cache of whole pieces of any length, and a merge loop for very long pieces.
/// </summary>
internal sealed class BytePairEncoder
{
    // Bounded so that a long-running server fed endless distinct words cannot grow without limit.
    private const int MaxCachedPieces = 100_000;

    // The library's merging grows quadratically with the piece (16 KB of CJK letters: ~6x our loop's time, 64 KB: ~19x),
    // which one unbroken run of letters in a prompt could exploit; below this it is the faster of the two.
    private const int LongestLibraryPieceBytes = 4096;

    private readonly BpeTokenizer _merger;
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

        // Checked here because the library silently drops characters it cannot map to an id.
        for (var b = 0; b < 256; b++)
        {
            var symbol = ByteLevelAlphabet.ToChar((byte)b).ToString();
            if (!vocabulary.TryGetValue(symbol, out _byteIds[b]))
            {
                throw new ModelLoadException(sourceFile, "model.vocab", $"the byte-level symbol '{symbol}' for byte 0x{b:X2} is missing, so some text could not be encoded.");
            }
        }

        _merges = [];
        var mergeLines = new List<string>();
        var rank = 0;
        foreach (var (left, right) in merges)
        {
            if (!vocabulary.TryGetValue(left, out var leftId) || !vocabulary.TryGetValue(right, out var rightId)
                || !vocabulary.TryGetValue(left + right, out var mergedId))
            {
                throw new ModelLoadException(sourceFile, "model.merges", $"merge {rank} ('{left}' '{right}') uses a token that is not in model.vocab.");
            }

            // The library takes "left right" lines; byte-level symbols never include a plain space.
            if (left.Contains(' ') || right.Contains(' '))
            {
                throw new ModelLoadException(sourceFile, "model.merges", $"merge {rank} ('{left}' '{right}') contains a space, which byte-level BPE never produces.");
            }

            // A repeated pair keeps its first (best) rank, as in Hugging Face's loader; the library would reject the repeat.
            if (_merges.TryAdd(PairKey(leftId, rightId), new Merge(rank, mergedId)))
            {
                mergeLines.Add($"{left} {right}");
            }

            rank++;
        }

        try
        {
            _merger = BpeTokenizer.Create(new BpeOptions(vocabulary) { Merges = mergeLines, ByteLevel = true });
        }
        catch (Exception error) when (error is ArgumentException or InvalidOperationException)
        {
            throw new ModelLoadException(sourceFile, "model", $"Microsoft.ML.Tokenizers rejected the BPE model ({error.Message})", error);
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

    /// <summary>Merges a piece with Microsoft.ML.Tokenizers; the piece is already split and normalized.</summary>
    public int[] MergeWithLibrary(ReadOnlySpan<char> piece) =>
        [.. _merger.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false)];

    /// <summary>Merges a piece with a priority queue of (rank, position), in O(n log n) however long the piece is.</summary>
    public int[] MergeLongPiece(ReadOnlySpan<char> piece)
    {
        var byteCount = Encoding.UTF8.GetByteCount(piece);
        var bytes = new byte[byteCount];
        Encoding.UTF8.GetBytes(piece, bytes);

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

    private int[] EncodeUncached(ReadOnlySpan<char> piece)
    {
        if (_ignoreMerges && TryGetWholePieceId(piece, out var wholeId))
        {
            return [wholeId];
        }

        return Encoding.UTF8.GetByteCount(piece) <= LongestLibraryPieceBytes ? MergeWithLibrary(piece) : MergeLongPiece(piece);
    }

    /// <summary>Models trained with ignore_merges take a whole piece that is itself a vocabulary entry as is.</summary>
    private bool TryGetWholePieceId(ReadOnlySpan<char> piece, out int id)
    {
        var byteCount = Encoding.UTF8.GetByteCount(piece);
        var bytes = byteCount <= 256 ? stackalloc byte[byteCount] : new byte[byteCount];
        Encoding.UTF8.GetBytes(piece, bytes);
        Span<char> word = byteCount <= 256 ? stackalloc char[byteCount] : new char[byteCount];
        for (var i = 0; i < byteCount; i++)
        {
            word[i] = ByteLevelAlphabet.ToChar(bytes[i]);
        }

        return _vocabularyBySpan.TryGetValue(word, out id);
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
