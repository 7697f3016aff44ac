using System.Numerics.Tensors;

namespace Granary.Training;

/// <summary>
/// Row-major f32 matrix products of training: forward x W^T, input gradients dy W and weight gradients dy^T x.
/// Parallel over independent output rows so no two threads write the same element.
/// </summary>
internal static unsafe class MatrixMath
{
    // Below this many multiply-adds a product runs on the calling thread: scheduling would cost more.
    private const long ParallelThreshold = 1 << 15;

    // Per calling thread, so ranks that share a host (threads of one process, or a rank's own pass) each keep to
    // their share of the cores; 0 uses them all.
    [ThreadStatic]
    private static int t_threadLimit;

    /// <summary>Limits the products started from this thread to <paramref name="threads"/> cores (0: all) until disposed.</summary>
    public static ThreadLimitScope LimitThreads(int threads)
    {
        var scope = new ThreadLimitScope(t_threadLimit);
        t_threadLimit = Math.Max(0, threads);
        return scope;
    }

    /// <summary>c[m, n] (+)= sum_k a[m, k] * b[n, k]  (a [m, k], b [n, k]).</summary>
    public static void MultiplyTransposed(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false)
    {
        For(m, (long)n * k, (start, end) =>
        {
            for (var i = start; i < end; i++)
            {
                var row = new ReadOnlySpan<float>(a + ((long)i * k), k);
                var output = c + ((long)i * n);
                for (var j = 0; j < n; j++)
                {
                    var dot = TensorPrimitives.Dot(row, new ReadOnlySpan<float>(b + ((long)j * k), k));
                    output[j] = accumulate ? output[j] + dot : dot;
                }
            }
        });
    }

    /// <summary>c[m, n] (+)= sum_k a[m, k] * b[k, n]  (a [m, k], b [k, n]).</summary>
    public static void Multiply(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false)
    {
        For(m, (long)n * k, (start, end) =>
        {
            for (var i = start; i < end; i++)
            {
                var output = new Span<float>(c + ((long)i * n), n);
                if (!accumulate)
                {
                    output.Clear();
                }

                var row = a + ((long)i * k);
                for (var p = 0; p < k; p++)
                {
                    var factor = row[p];
                    if (factor != 0)
                    {
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(b + ((long)p * n), n), factor, output, output);
                    }
                }
            }
        });
    }

    /// <summary>c[m, n] += sum_k a[k, m] * b[k, n]  (a [k, m], b [k, n]): weight gradients dy^T x.</summary>
    public static void AccumulateTransposedLeft(float* a, float* b, float* c, int m, int n, int k)
    {
        For(m, (long)n * k, (start, end) =>
        {
            for (var i = start; i < end; i++)
            {
                var output = new Span<float>(c + ((long)i * n), n);
                for (var p = 0; p < k; p++)
                {
                    var factor = a[((long)p * m) + i];
                    if (factor != 0)
                    {
                        TensorPrimitives.MultiplyAdd(new ReadOnlySpan<float>(b + ((long)p * n), n), factor, output, output);
                    }
                }
            }
        });
    }

    /// <summary>Runs body over [0, count) in contiguous chunks, in parallel when the work is large enough.</summary>
    public static void For(int count, long workPerItem, Action<int, int> body)
    {
        if (count <= 1 || count * workPerItem < ParallelThreshold)
        {
            body(0, count);
            return;
        }

        var threads = t_threadLimit > 0 ? t_threadLimit : Environment.ProcessorCount;
        if (threads == 1)
        {
            body(0, count);
            return;
        }

        var chunks = Math.Min(count, threads * 4);
        Parallel.For(0, chunks, new ParallelOptions { MaxDegreeOfParallelism = threads }, chunk =>
        {
            var start = (int)((long)count * chunk / chunks);
            var end = (int)((long)count * (chunk + 1) / chunks);
            body(start, end);
        });
    }

    /// <summary>Restores the previous limit of the thread that set one.</summary>
    public readonly struct ThreadLimitScope(int previous) : IDisposable
    {
        public void Dispose() => t_threadLimit = previous;
    }
}
