using System.Numerics.Tensors;
using System.Runtime.Intrinsics.X86;

namespace Granary.Tensors.Cpu;

/// <summary>Arguments of causal grouped-query attention; one work item per (query row, kv head).</summary>
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
}

internal static unsafe class AttentionKernel
{
    // Cached positions fetched ahead. One kv head's rows are headDim floats a whole cache row (all kv heads) apart,
    // a stride the hardware prefetcher does not follow, so without this each row costs a DRAM round trip.
    private const int PrefetchPositions = 16;

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
        var scores = ThreadScratch.Floats(2, (long)group * length);
        var firstHead = kvHead * group;
        var query = job.Query + (((long)queryRow * job.Heads) + firstHead) * d;
        var output = job.Output + (((long)queryRow * job.Heads) + firstHead) * d;
        var kvStride = (long)job.KvHeads * d;
        var keys = job.Keys + ((long)kvHead * d);
        var values = job.Values + ((long)kvHead * d);

        PrefetchRows(keys, kvStride, 0, Math.Min(length, PrefetchPositions), d);
        for (long j = 0; j < length; j++)
        {
            var key = keys + (j * kvStride);
            PrefetchRows(keys, kvStride, j + PrefetchPositions, Math.Min(length, j + PrefetchPositions + 1), d);
            for (var h = 0; h < group; h++)
            {
                scores[(h * (long)length) + j] = DenseKernels.Dot(query + ((long)h * d), key, d) * job.Scale;
            }
        }

        for (var h = 0; h < group; h++)
        {
            var row = new Span<float>(scores + (h * (long)length), length);
            TensorPrimitives.Subtract(row, TensorPrimitives.Max(row), row);
            TensorPrimitives.Exp(row, row);
            TensorPrimitives.Multiply(row, 1f / TensorPrimitives.Sum(row), row);
            new Span<float>(output + ((long)h * d), d).Clear();
        }

        PrefetchRows(values, kvStride, 0, Math.Min(length, PrefetchPositions), d);
        for (long j = 0; j < length; j++)
        {
            var value = values + (j * kvStride);
            PrefetchRows(values, kvStride, j + PrefetchPositions, Math.Min(length, j + PrefetchPositions + 1), d);
            for (var h = 0; h < group; h++)
            {
                DenseKernels.MultiplyAdd(value, scores[(h * (long)length) + j], output + ((long)h * d), d);
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
