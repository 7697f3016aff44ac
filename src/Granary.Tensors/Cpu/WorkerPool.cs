using System.Runtime.ExceptionServices;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Persistent worker threads with a low-overhead fork/join: the caller publishes a job (a function pointer and a
/// pointer to its arguments), works on it itself, and waits for the workers. Idle workers spin briefly before
/// blocking, so back-to-back decode kernels (tens of microseconds each) do not pay a kernel wake-up each time.
/// Work items are claimed dynamically from a shared counter. One job runs at a time. When the caller runs out of items
/// it closes the job and waits only for workers already inside it: a worker the OS has not scheduled yet (an
/// oversubscribed machine) joins nothing late and never holds the caller up.
/// </summary>
internal sealed unsafe class WorkerPool : IDisposable
{
    private const int SpinIterationsBeforeBlocking = 5_000;

    private readonly Thread[] _threads;
    private readonly object _gate = new();
    private readonly object _submitLock = new();

    private delegate*<void*, int, void> _work;
    private void* _arguments;
    private int _itemCount;
    private int _nextItem;
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
        _threads = new Thread[threads - 1];
        for (var i = 0; i < _threads.Length; i++)
        {
            _threads[i] = new Thread(WorkerLoop) { IsBackground = true, Name = $"Granary CPU worker {i + 1}" };
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
            _itemCount = itemCount;
            _nextItem = 0;
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

            DrainItems();
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

    private void DrainItems()
    {
        var work = _work;
        var arguments = _arguments;
        var count = _itemCount;
        int item;
        try
        {
            while ((item = Interlocked.Increment(ref _nextItem) - 1) < count)
            {
                work(arguments, item);
            }
        }
        catch (Exception exception)
        {
            // The arguments live on the submitter's stack: it must not unwind before every worker is done,
            // so the failure is carried back and rethrown there; the remaining items are skipped.
            Interlocked.CompareExchange(ref _failure, ExceptionDispatchInfo.Capture(exception), null);
            Volatile.Write(ref _nextItem, count);
        }
    }

    private void WorkerLoop()
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
                DrainItems();
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
