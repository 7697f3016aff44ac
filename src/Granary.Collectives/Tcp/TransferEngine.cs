using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Granary.Collectives.Tcp;

/// <summary>
/// Drives a set of concurrent sends and receives over non-blocking sockets from one thread: it moves whatever
/// the kernel accepts, and sleeps in poll(2) only when nothing moved for a moment. A peer that makes no progress for
/// the timeout, closes its connection, or errors fails the whole set with a <see cref="CollectiveException"/>.
/// The transfer table is reused, so steady-state operations allocate nothing.
/// </summary>
internal sealed unsafe class TransferEngine
{
    /// <summary>
    /// How long after the last progress a pump keeps retrying the sockets, yielding the core between tries, before it
    /// sleeps in poll: a rank asleep in poll pays a scheduler wake-up (tens of µs, more in a VM) per message, most of a
    /// small all-sum's time, while a peer's data on loopback or a LAN usually comes within this.
    /// </summary>
    private static readonly long SpinTicks = Stopwatch.Frequency * 200 / 1_000_000;

    private struct Transfer
    {
        public Socket Socket;
        public int Fd;
        public int Peer;
        public byte* Pointer;
        public long Length;
        public long Done;
        public bool IsSend;
    }

    private readonly TimeSpan _timeout;
    private Transfer[] _transfers = new Transfer[16];
    private int _count;
    private int _pending;
    private string _operation = "";
    private long _lastProgress;

    public TransferEngine(TimeSpan timeout) => _timeout = timeout;

    /// <summary>Starts a new set of transfers for <paramref name="operation"/> (named in errors).</summary>
    public void Begin(string operation)
    {
        _operation = operation;
        _count = 0;
        _pending = 0;
        _lastProgress = Stopwatch.GetTimestamp();
    }

    /// <summary>Queues a transfer and returns its index; zero-length transfers complete at once.</summary>
    public int Add(Socket socket, int peer, byte* pointer, long length, bool isSend)
    {
        if (_count == _transfers.Length)
        {
            Array.Resize(ref _transfers, _count * 2);
        }

        _transfers[_count] = new Transfer
        {
            Socket = socket,
            Fd = (int)socket.SafeHandle.DangerousGetHandle(),
            Peer = peer,
            Pointer = pointer,
            Length = length,
            Done = 0,
            IsSend = isSend,
        };
        if (length > 0)
        {
            _pending++;
        }

        return _count++;
    }

    public long Done(int index) => _transfers[index].Done;

    public void RunToCompletion()
    {
        while (Pump())
        {
        }
    }

    /// <summary>Moves data once, waiting in poll when nothing could move; returns false when every transfer is done.</summary>
    public bool Pump()
    {
        if (_pending == 0)
        {
            return false;
        }

        var moved = false;
        for (var i = 0; i < _count; i++)
        {
            moved |= TryMove(ref _transfers[i]);
        }

        if (_pending == 0)
        {
            return false;
        }

        var now = Stopwatch.GetTimestamp();
        if (moved)
        {
            _lastProgress = now;
            return true;
        }

        // Retrying costs a syscall per socket; sleeping in poll costs a wake-up when data comes. The yield hands the
        // core over when another thread (often the very peer we wait for, when ranks outnumber cores or the machine
        // is busy) wants it: a plain spin made that peer wait out the whole spin, and was slower than sleeping.
        if (now - _lastProgress < SpinTicks)
        {
            Thread.Yield();
            return true;
        }

        WaitForReadiness();
        return true;
    }

    private bool TryMove(ref Transfer transfer)
    {
        var moved = false;
        while (transfer.Done < transfer.Length)
        {
            var chunk = (int)Math.Min(transfer.Length - transfer.Done, 1 << 30);
            var span = new Span<byte>(transfer.Pointer + transfer.Done, chunk);
            SocketError error;
            int n;
            try
            {
                n = transfer.IsSend
                    ? transfer.Socket.Send(span, SocketFlags.None, out error)
                    : transfer.Socket.Receive(span, SocketFlags.None, out error);
            }
            catch (ObjectDisposedException e)
            {
                throw Failure(transfer, "the group was closed", e);
            }

            if (error == SocketError.WouldBlock)
            {
                break;
            }

            if (error != SocketError.Success)
            {
                throw Failure(transfer, error is SocketError.ConnectionReset or SocketError.Shutdown or SocketError.ConnectionAborted
                    ? "the connection was reset (the peer died or gave up)"
                    : $"socket error {error}", null);
            }

            if (n == 0 && !transfer.IsSend)
            {
                throw Failure(transfer, "the peer closed the connection (it died or gave up)", null);
            }

            transfer.Done += n;
            moved = true;
            if (transfer.Done == transfer.Length)
            {
                _pending--;
            }
        }

        return moved;
    }

    private void WaitForReadiness()
    {
        var fds = stackalloc Native.PollFd[_pending];
        var n = 0;
        for (var i = 0; i < _count; i++)
        {
            ref var t = ref _transfers[i];
            if (t.Done < t.Length)
            {
                fds[n++] = new Native.PollFd { Fd = t.Fd, Events = t.IsSend ? Native.PollOut : Native.PollIn };
            }
        }

        var waitMilliseconds = 1000;
        if (_timeout != Timeout.InfiniteTimeSpan)
        {
            var left = _timeout - Stopwatch.GetElapsedTime(_lastProgress);
            if (left <= TimeSpan.Zero)
            {
                throw Stalled();
            }

            waitMilliseconds = (int)Math.Clamp(Math.Ceiling(left.TotalMilliseconds), 1, 1000);
        }

        var ready = Native.Poll(fds, (nuint)n, waitMilliseconds);
        if (ready < 0 && Marshal.GetLastPInvokeError() != 4 /* EINTR */)
        {
            throw new CollectiveException($"{_operation}: poll failed with errno {Marshal.GetLastPInvokeError()}.", operation: _operation);
        }
    }

    private CollectiveException Stalled()
    {
        // Name the peer we wait to hear from: a send can only stall because that peer stopped reading.
        var culprit = -1;
        for (var i = 0; i < _count; i++)
        {
            ref var t = ref _transfers[i];
            if (t.Done < t.Length && (culprit < 0 || !t.IsSend))
            {
                culprit = i;
                if (!t.IsSend)
                {
                    break;
                }
            }
        }

        ref var stalled = ref _transfers[culprit];
        var direction = stalled.IsSend ? "sending to" : "receiving from";
        return new CollectiveException(
            $"{_operation}: no progress {direction} rank {stalled.Peer} for {_timeout.TotalSeconds:0.###} s " +
            $"({stalled.Done} of {stalled.Length} bytes); the peer stalled or died.",
            stalled.Peer, _operation);
    }

    private CollectiveException Failure(in Transfer transfer, string reason, Exception? inner) =>
        new($"{_operation}: {(transfer.IsSend ? "sending to" : "receiving from")} rank {transfer.Peer} failed: {reason}.", transfer.Peer, _operation, inner);
}
