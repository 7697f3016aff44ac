using System.Numerics.Tensors;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Arguments of causal grouped-query attention; one work item per (query row, kv head), or for one query row split by
/// positions, per (kv head, position range) with the partial results in <see cref="Partials"/>.
/// </summary>
internal unsafe struct AttentionJob
{
    public float* Query;
    public float* Keys;
    public float* Values;
    public float* Output;
    public int Heads;
    public int KvHeads;
    public int HeadDim;
    public int StartPosition;
    public float Scale;

    // Position ranges per kv head of a split one-row job (1: not split).
    public int Splits;

    // Per head and range: headDim unnormalised output floats, then the range's maximum score and its sum of exponentials.
    public float* Partials;
}

internal static unsafe class AttentionKernel
{
    // Cached positions fetched ahead. One kv head's rows are headDim floats a whole cache row (all kv heads) apart,
    // a stride the hardware prefetcher does not follow, so without this each row costs a DRAM round trip.
    private const int PrefetchPositions = 16;

    /// <summary>Fewest positions a split range holds: below this the merge and the extra fork cost more than they save.</summary>
    private const int MinimumSplitPositions = 64;

    /// <summary>
    /// Position ranges to split each kv head's attention of one query row into, so that every thread gets work when there
    /// are fewer kv heads than threads (8 kv heads on 16 threads would leave half idle); 1 when not worth it.
    /// </summary>
    public static int Splits(int rows, int kvHeads, int threads, int length) =>
        rows != 1 || kvHeads >= threads ? 1 : Math.Max(1, Math.Min((threads + kvHeads - 1) / kvHeads, length / MinimumSplitPositions));

    /// <summary>Floats of <see cref="AttentionJob.Partials"/> a split job needs.</summary>
    public static long PartialFloats(int heads, int splits, int headDim) => (long)heads * splits * (headDim + 2);

    /// <summary>
    /// All query heads that share one kv head attend together, so each cached key and value row is read once per
    /// query row. Scores live in per-thread scratch, so long contexts allocate nothing per call.
    /// </summary>
    public static void Run(void* arguments, int item)
    {
        ref var job = ref *(AttentionJob*)arguments;
        var queryRow = item / job.KvHeads;
        var kvHead = item % job.KvHeads;
        var group = job.Heads / job.KvHeads;
        var d = job.HeadDim;
        var length = job.StartPosition + queryRow + 1;
        var firstHead = kvHead * group;
        var output = job.Output + (((long)queryRow * job.Heads) + firstHead) * d;
        var statistics = ThreadScratch.Floats(3, 2L * group);
        Attend(ref job, queryRow, kvHead, 0, length, output, d, statistics, 2);
        for (var h = 0; h < group; h++)
        {
            TensorPrimitives.Multiply(new Span<float>(output + ((long)h * d), d), 1f / statistics[(2 * h) + 1], new Span<float>(output + ((long)h * d), d));
        }
    }

    /// <summary>Item (kv head, range) of a split one-row job: unnormalised output, maximum and sum into the partials.</summary>
    public static void RunRange(void* arguments, int item)
    {
        ref var job = ref *(AttentionJob*)arguments;
        var kvHead = item / job.Splits;
        var range = item % job.Splits;
        var length = (long)job.StartPosition + 1;
        var first = Partial(ref job, kvHead * (job.Heads / job.KvHeads), range);
        var headStride = Partial(ref job, 1, 0) - Partial(ref job, 0, 0);
        Attend(ref job, 0, kvHead, length * range / job.Splits, length * (range + 1) / job.Splits, first, headStride, first + job.HeadDim, headStride);
    }

    /// <summary>Combines the ranges of a split job: each head's outputs weighted by exp(range max - overall max), over the weighted sums.</summary>
    public static void MergeRanges(ref AttentionJob job)
    {
        var d = job.HeadDim;
        for (var h = 0; h < job.Heads; h++)
        {
            var maximum = float.NegativeInfinity;
            for (var r = 0; r < job.Splits; r++)
            {
                maximum = MathF.Max(maximum, Partial(ref job, h, r)[d]);
            }

            var output = new Span<float>(job.Output + ((long)h * d), d);
            output.Clear();
            var total = 0f;
            for (var r = 0; r < job.Splits; r++)
            {
                var range = Partial(ref job, h, r);
                var weight = MathF.Exp(range[d] - maximum);
                total += weight * range[d + 1];
                DenseKernels.MultiplyAdd(range, weight, job.Output + ((long)h * d), d);
            }

            TensorPrimitives.Multiply(output, 1f / total, output);
        }
    }

    /// <summary>Head <paramref name="head"/>'s partial result for position range <paramref name="range"/>.</summary>
    private static float* Partial(ref AttentionJob job, int head, int range) =>
        job.Partials + ((((long)head * job.Splits) + range) * (job.HeadDim + 2));

    /// <summary>
    /// Positions [<paramref name="first"/>, <paramref name="end"/>) of the kv head's cache for the query heads of its
    /// group: Σ exp(score - max) v into head h's <paramref name="output"/> + h × <paramref name="outputStride"/>, and the
    /// maximum score and the sum of exponentials at <paramref name="statistics"/> + h × <paramref name="statisticsStride"/>.
    /// </summary>
    private static void Attend(
        ref AttentionJob job, int queryRow, int kvHead, long first, long end, float* output, long outputStride, float* statistics, long statisticsStride)
    {
        var group = job.Heads / job.KvHeads;
        var d = job.HeadDim;
        var count = end - first;
        var scores = ThreadScratch.Floats(2, group * count);
        var query = job.Query + (((long)queryRow * job.Heads) + (kvHead * group)) * d;
        var kvStride = (long)job.KvHeads * d;
        var keys = job.Keys + ((long)kvHead * d) + (first * kvStride);
        var values = job.Values + ((long)kvHead * d) + (first * kvStride);

        PrefetchRows(keys, kvStride, 0, Math.Min(count, PrefetchPositions), d);
        for (long j = 0; j < count; j++)
        {
            var key = keys + (j * kvStride);
            PrefetchRows(keys, kvStride, j + PrefetchPositions, Math.Min(count, j + PrefetchPositions + 1), d);
            for (var h = 0; h < group; h++)
            {
                scores[(h * count) + j] = DenseKernels.Dot(query + ((long)h * d), key, d) * job.Scale;
            }
        }

        for (var h = 0; h < group; h++)
        {
            var row = new Span<float>(scores + (h * count), (int)count);
            var maximum = TensorPrimitives.Max(row);
            TensorPrimitives.Subtract(row, maximum, row);
            TensorPrimitives.Exp(row, row);
            statistics[h * statisticsStride] = maximum;
            statistics[(h * statisticsStride) + 1] = TensorPrimitives.Sum(row);
            new Span<float>(output + (h * outputStride), d).Clear();
        }

        PrefetchRows(values, kvStride, 0, Math.Min(count, PrefetchPositions), d);
        for (long j = 0; j < count; j++)
        {
            var value = values + (j * kvStride);
            PrefetchRows(values, kvStride, j + PrefetchPositions, Math.Min(count, j + PrefetchPositions + 1), d);
            for (var h = 0; h < group; h++)
            {
                DenseKernels.MultiplyAdd(value, scores[(h * count) + j], output + (h * outputStride), d);
            }
        }
    }

    /// <summary>Prefetches the head's rows at positions [<paramref name="first"/>, <paramref name="end"/>).</summary>
    private static void PrefetchRows(float* rows, long stride, long first, long end, int d)
    {
        if (!Sse.IsSupported)
        {
            return;
        }

        for (var j = first; j < end; j++)
        {
            var row = (byte*)(rows + (j * stride));
            for (var offset = 0; offset < d * sizeof(float); offset += 64)
            {
                Sse.Prefetch0(row + offset);
            }
        }
    }
}
