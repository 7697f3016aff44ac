using System.Runtime.ExceptionServices;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Persistent worker threads with a low-overhead fork/join: the caller publishes a job (a function pointer and a
/// pointer to its arguments), works on it itself, and waits for the workers. Idle workers spin briefly before
/// blocking, so back-to-back decode kernels (tens of microseconds each) do not pay a kernel wake-up each time.
/// Each thread owns a contiguous run of the items and claims them front to back, a shrinking share at a time, so it
/// streams adjacent memory (its prefetches run ahead into its own next item) and its claims are few and touch only its
/// own cache line; a thread that runs dry steals the back half of another's run, so items can be small and the join
/// waits for little more than one item.
/// One job runs at a time. When the caller finds no item left it closes the job and waits only for workers already
/// inside it: a worker the OS has not scheduled yet (an oversubscribed machine) joins nothing late and never holds the
/// caller up.
/// </summary>
internal sealed unsafe class WorkerPool : IDisposable
{
    private const int SpinIterationsBeforeBlocking = 5_000;

    /// <summary>A claim takes this share of the items left in a thread's run (see <see cref="ClaimFront"/>)...</summary>
    private const int ClaimDivisor = 4;

    /// <summary>...but no more than this many, which a thread that the OS holds up keeps from the others' stealing.</summary>
    internal const int MaxClaimItems = 8;

    // Longs from one thread's run to the next: 128 bytes, so no two runs share a cache line or an adjacent-line prefetch.
    private const int RangeStride = 16;

    private readonly Thread[] _threads;
    private readonly object _gate = new();
    private readonly object _submitLock = new();

    // Per thread (the caller is 0), its unclaimed items [front, back) packed as front << 32 | back.
    private readonly long[] _ranges;

    private delegate*<void*, int, void> _work;
    private void* _arguments;
    private int _activeWorkers;
    private long _generation;
    private long _openGeneration = -1;
    private int _sleepers;
    private volatile bool _disposed;
    private ExceptionDispatchInfo? _failure;

    public WorkerPool(int threads)
    {
        if (threads < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(threads), threads, "A worker pool needs at least one thread.");
        }

        ThreadCount = threads;
        _ranges = new long[threads * RangeStride];
        _threads = new Thread[threads - 1];
        for (var i = 0; i < _threads.Length; i++)
        {
            var participant = i + 1;
            _threads[i] = new Thread(() => WorkerLoop(participant)) { IsBackground = true, Name = $"Granary CPU worker {participant}" };
            _threads[i].Start();
        }
    }

    /// <summary>Threads that run a job, the caller included.</summary>
    public int ThreadCount { get; }

    /// <summary>Runs <paramref name="work"/>(arguments, item) for every item in [0, itemCount), in parallel; returns when all are done.</summary>
    public void Run(int itemCount, delegate*<void*, int, void> work, void* arguments)
    {
        if (itemCount <= 0)
        {
            return;
        }

        if (itemCount == 1 || _threads.Length == 0)
        {
            for (var i = 0; i < itemCount; i++)
            {
                work(arguments, i);
            }

            return;
        }

        lock (_submitLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            _work = work;
            _arguments = arguments;
            for (var t = 0; t < ThreadCount; t++)
            {
                _ranges[t * RangeStride] = Pack((int)((long)itemCount * t / ThreadCount), (int)((long)itemCount * (t + 1) / ThreadCount));
            }

            var generation = _generation + 1;
            Volatile.Write(ref _openGeneration, generation);
            Interlocked.Increment(ref _generation);
            if (Volatile.Read(ref _sleepers) > 0)
            {
                lock (_gate)
                {
                    Monitor.PulseAll(_gate);
                }
            }

            DrainItems(0);
            Interlocked.Exchange(ref _openGeneration, -1);
            var spinner = default(SpinWait);
            while (Volatile.Read(ref _activeWorkers) != 0)
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }

            _work = null;
            _arguments = null;
            if (_failure is { } failure)
            {
                _failure = null;
                failure.Throw();
            }
        }
    }

    public void Dispose()
    {
        _disposed = true;
        Interlocked.Increment(ref _generation);
        lock (_gate)
        {
            Monitor.PulseAll(_gate);
        }

        foreach (var thread in _threads)
        {
            thread.Join();
        }
    }

    private static long Pack(int front, int back) => ((long)front << 32) | (uint)back;

    private void DrainItems(int participant)
    {
        var work = _work;
        var arguments = _arguments;
        try
        {
            do
            {
                while (ClaimFront(participant, out var first, out var end))
                {
                    for (var item = first; item < end; item++)
                    {
                        work(arguments, item);
                    }
                }
            }
            while (StealInto(participant));
        }
        catch (Exception exception)
        {
            // The arguments live on the submitter's stack: it must not unwind before every worker is done,
            // so the failure is carried back and rethrown there; the remaining items are skipped.
            Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(exception), null);
        }
    }

    /// <summary>
    /// Claims items [<paramref name="first"/>, <paramref name="end"/>) from the front of the participant's own run: a
    /// share of what is left (1/<see cref="ClaimDivisor"/>, 1 to <see cref="MaxClaimItems"/> items), so a long run costs
    /// a few atomic claims rather than one per item (each is a full fence, which also stalls the loads in flight of a
    /// streaming kernel), while the last claims are single items the other threads can still steal around. False when
    /// the run is empty (or the job failed).
    /// </summary>
    private bool ClaimFront(int participant, out int first, out int end)
    {
        ref var range = ref _ranges[participant * RangeStride];
        while (Volatile.Read(ref _failure) is null)
        {
            var current = Volatile.Read(ref range);
            var (front, back) = ((int)(current >> 32), (int)current);
            if (front >= back)
            {
                break;
            }

            var claimed = Math.Clamp((back - front) / ClaimDivisor, 1, MaxClaimItems);
            if (Interlocked.CompareExchange(ref range, Pack(front + claimed, back), current) == current)
            {
                (first, end) = (front, front + claimed);
                return true;
            }
        }

        (first, end) = (0, 0);
        return false;
    }

    /// <summary>
    /// Moves the back half (at least one item) of another participant's run into this one's empty run; false when
    /// every run is empty. Only a run's owner makes it non-empty, so the plain write cannot race with another thief.
    /// </summary>
    private bool StealInto(int participant)
    {
        for (var offset = 1; offset < ThreadCount; offset++)
        {
            ref var range = ref _ranges[((participant + offset) % ThreadCount) * RangeStride];
            while (Volatile.Read(ref _failure) is null)
            {
                var current = Volatile.Read(ref range);
                var (front, back) = ((int)(current >> 32), (int)current);
                if (front >= back)
                {
                    break;
                }

                var middle = front + ((back - front) / 2);
                if (Interlocked.CompareExchange(ref range, Pack(front, middle), current) == current)
                {
                    Volatile.Write(ref _ranges[participant * RangeStride], Pack(middle, back));
                    return true;
                }
            }
        }

        return false;
    }

    private void WorkerLoop(int participant)
    {
        var seen = Volatile.Read(ref _generation);
        while (true)
        {
            seen = WaitForNextGeneration(seen);
            if (_disposed)
            {
                return;
            }

            // Enter, then check the job is still open: the caller closes it before waiting for active workers,
            // so either it waits for this one or this one sees it closed (both sides use full fences).
            Interlocked.Increment(ref _activeWorkers);
            if (Volatile.Read(ref _openGeneration) == seen)
            {
                DrainItems(participant);
            }

            Interlocked.Decrement(ref _activeWorkers);
        }
    }

    private long WaitForNextGeneration(long seen)
    {
        for (var spin = 0; spin < SpinIterationsBeforeBlocking; spin++)
        {
            var current = Volatile.Read(ref _generation);
            if (current != seen)
            {
                return current;
            }

            Thread.SpinWait(8);
        }

        lock (_gate)
        {
            // The interlocked increment is a full fence: either the submitter sees a sleeper and pulses,
            // or this thread sees the new generation before waiting.
            Interlocked.Increment(ref _sleepers);
            long current;
            while ((current = Volatile.Read(ref _generation)) == seen)
            {
                Monitor.Wait(_gate);
            }

            Interlocked.Decrement(ref _sleepers);
            return current;
        }
    }
}
