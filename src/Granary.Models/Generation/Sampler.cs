using System.Numerics.Tensors;

namespace Granary.Models.Generation;

/// <summary>
/// Picks tokens from logits with temperature, top-k, top-p, min-p and repetition penalty.
/// Scratch buffers are sized to the vocabulary once, so sampling allocates nothing per token.
/// </summary>
public sealed class Sampler
{
    // Above this many candidates a full sort for top-p is too slow per token; a threshold search trims them first.
    private const int SortCandidatesLimit = 4096;

    private readonly SamplingOptions _options;
    private readonly Random _random;
    private readonly float[] _probabilities;
    private readonly int[] _candidates;
    private readonly float[] _candidateKeys;
    private readonly int[] _heapIds;

    public Sampler(SamplingOptions options, int vocabularySize)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabularySize, 1);
        _options = options;
        _random = options.Seed is int seed ? new Random(seed) : new Random();
        _probabilities = new float[vocabularySize];
        _candidates = new int[vocabularySize];
        _candidateKeys = new float[vocabularySize];
        _heapIds = new int[vocabularySize];
    }

    public SamplingOptions Options => _options;

    /// <summary>Picks the next token. <paramref name="logits"/> is modified (penalties, temperature).</summary>
    /// <param name="recentTokens">Tokens seen so far (prompt and output); only the last context-size ones matter.</param>
    public int Sample(Span<float> logits, ReadOnlySpan<int> recentTokens)
    {
        if (logits.Length != _probabilities.Length)
        {
            throw new ArgumentException($"Expected {_probabilities.Length} logits, got {logits.Length}.", nameof(logits));
        }

        ApplyRepetitionPenalty(logits, recentTokens);
        if (_options.Temperature == 0)
        {
            return TensorPrimitives.IndexOfMax(logits);
        }

        var probabilities = _probabilities.AsSpan();
        TensorPrimitives.Divide(logits, _options.Temperature, probabilities);
        TensorPrimitives.SoftMax(probabilities, probabilities);

        var count = CollectCandidates(probabilities);
        var candidates = _candidates.AsSpan(0, count);
        var mass = 0.0;
        foreach (var id in candidates)
        {
            mass += probabilities[id];
        }

        var draw = _random.NextDouble() * mass;
        foreach (var id in candidates)
        {
            draw -= probabilities[id];
            if (draw <= 0)
            {
                return id;
            }
        }

        return candidates[^1];
    }

    private void ApplyRepetitionPenalty(Span<float> logits, ReadOnlySpan<int> recentTokens)
    {
        var penalty = _options.RepetitionPenalty;
        if (penalty == 1.0f || _options.RepetitionContextSize == 0)
        {
            return;
        }

        var window = recentTokens[Math.Max(0, recentTokens.Length - _options.RepetitionContextSize)..];

        // Each distinct token is penalised once however often it appears, as in Hugging Face; a negative
        // marker in the probability scratch remembers which were done without a set allocation.
        foreach (var id in window)
        {
            if ((uint)id >= (uint)logits.Length || _probabilities[id] < 0)
            {
                continue;
            }

            _probabilities[id] = -1;
            logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
        }

        foreach (var id in window)
        {
            if ((uint)id < (uint)logits.Length)
            {
                _probabilities[id] = 0;
            }
        }
    }

    /// <summary>
    /// Writes the ids that survive min-p, top-k and top-p into the candidate buffer, most likely first when
    /// ordering matters, and returns how many there are.
    /// </summary>
    private int CollectCandidates(ReadOnlySpan<float> probabilities)
    {
        var maxProbability = TensorPrimitives.Max(probabilities);
        var floor = _options.MinP > 0 ? _options.MinP * maxProbability : 0f;
        var count = 0;
        for (var id = 0; id < probabilities.Length; id++)
        {
            if (probabilities[id] > 0 && probabilities[id] >= floor)
            {
                _candidates[count++] = id;
            }
        }

        if (_options.TopK > 0 && _options.TopK < count)
        {
            count = KeepMostLikely(probabilities, count, _options.TopK);
        }

        if (_options.TopP < 1)
        {
            count = KeepNucleus(probabilities, count);
        }

        return count;
    }

    /// <summary>Keeps the <paramref name="keep"/> most likely candidates with a min-heap: O(n log k), no full sort.</summary>
    private int KeepMostLikely(ReadOnlySpan<float> probabilities, int count, int keep)
    {
        var heap = _candidateKeys.AsSpan(0, keep);
        var heapIds = _heapIds.AsSpan(0, keep);
        for (var i = 0; i < keep; i++)
        {
            heap[i] = probabilities[_candidates[i]];
            heapIds[i] = _candidates[i];
        }

        for (var i = (keep / 2) - 1; i >= 0; i--)
        {
            SiftDown(heap, heapIds, i);
        }

        for (var i = keep; i < count; i++)
        {
            var id = _candidates[i];
            if (probabilities[id] > heap[0])
            {
                heap[0] = probabilities[id];
                heapIds[0] = id;
                SiftDown(heap, heapIds, 0);
            }
        }

        heapIds.CopyTo(_candidates);
        SortByProbabilityDescending(probabilities, keep);
        return keep;
    }

    private static void SiftDown(Span<float> heap, Span<int> ids, int index)
    {
        while (true)
        {
            var smallest = index;
            var left = (2 * index) + 1;
            var right = left + 1;
            if (left < heap.Length && heap[left] < heap[smallest])
            {
                smallest = left;
            }

            if (right < heap.Length && heap[right] < heap[smallest])
            {
                smallest = right;
            }

            if (smallest == index)
            {
                return;
            }

            (heap[index], heap[smallest]) = (heap[smallest], heap[index]);
            (ids[index], ids[smallest]) = (ids[smallest], ids[index]);
            index = smallest;
        }
    }

    private int KeepNucleus(ReadOnlySpan<float> probabilities, int count)
    {
        if (count > SortCandidatesLimit)
        {
            count = TrimToThresholdCoveringTopP(probabilities, count);
        }

        SortByProbabilityDescending(probabilities, count);
        var total = 0.0;
        for (var i = 0; i < count; i++)
        {
            total += probabilities[_candidates[i]];
        }

        var cumulative = 0.0;
        for (var i = 0; i < count; i++)
        {
            cumulative += probabilities[_candidates[i]];
            if (cumulative >= _options.TopP * total)
            {
                return i + 1;
            }
        }

        return count;
    }

    /// <summary>
    /// Bisects for the highest probability threshold whose survivors still hold top-p of the mass, keeping
    /// the surviving candidates; the nucleus lies entirely inside them.
    /// </summary>
    private int TrimToThresholdCoveringTopP(ReadOnlySpan<float> probabilities, int count)
    {
        var candidates = _candidates.AsSpan(0, count);
        var total = 0.0;
        var high = 0f;
        foreach (var id in candidates)
        {
            total += probabilities[id];
            high = Math.Max(high, probabilities[id]);
        }

        var target = _options.TopP * total;
        var low = 0f;
        for (var iteration = 0; iteration < 32; iteration++)
        {
            var middle = (low + high) / 2;
            var mass = 0.0;
            foreach (var id in candidates)
            {
                if (probabilities[id] >= middle)
                {
                    mass += probabilities[id];
                }
            }

            if (mass >= target)
            {
                low = middle;
            }
            else
            {
                high = middle;
            }
        }

        var kept = 0;
        foreach (var id in candidates)
        {
            if (probabilities[id] >= low)
            {
                _candidates[kept++] = id;
            }
        }

        return kept;
    }

    private void SortByProbabilityDescending(ReadOnlySpan<float> probabilities, int count)
    {
        var keys = _candidateKeys.AsSpan(0, count);
        var ids = _candidates.AsSpan(0, count);
        for (var i = 0; i < count; i++)
        {
            // Negated so the ascending sort puts the most likely first.
            keys[i] = -probabilities[ids[i]];
        }

        keys.Sort(ids);
    }
}
