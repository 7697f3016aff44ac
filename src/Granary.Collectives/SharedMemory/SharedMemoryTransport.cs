using System.Diagnostics;
using System.IO.MemoryMappedFiles;
using Granary.Collectives.Tcp;
using Granary.Tensors;

namespace Granary.Collectives.SharedMemory;

/// <summary>
/// Collectives between processes of one machine through files in /dev/shm that every rank maps. Each rank owns a
/// region with two alternating data buffers and a sequence number it publishes after each phase; peers read the
/// data straight out of the owner's mapping (no copy through a socket or a kernel buffer). A large reduction copies in
/// the slices the peers reduce, each rank reduces its 1/n slice from every peer's buffer and its own input, and copies
/// the other slices' sums out; a small one is a single exchange in which every rank reduces the whole buffer.
/// Waiting spins briefly, then yields, then sleeps, watching the peer's process and abort flag, up to the timeout.
/// Point-to-point messages and subgroups use the TCP connections of the group.
/// </summary>
internal sealed unsafe class SharedMemoryTransport : ICollectiveTransport
{
    private const int HeaderBytes = 4096;
    private const int SequenceOffset = 0;
    private const int ProcessIdOffset = 64;
    private const int AbortedOffset = 128;

    /// <summary>
    /// All-reduces of at most this many bytes put their data in the sequence number's own cache line (one slot per
    /// window parity, after the 8-byte sequence), so a peer gets the data with the line that says it is there: one
    /// cache-line transfer per peer instead of two.
    /// </summary>
    private const int InlineBytes = 24;

    /// <summary>How long a waiting rank keeps yielding before it starts to sleep.</summary>
    private static readonly TimeSpan YieldPhase = TimeSpan.FromMicroseconds(500);

    /// <summary>
    /// All-reduces up to this many bytes may take one exchange: every rank reduces the whole buffer from every region,
    /// which saves the second synchronisation of reduce-scatter + all-gather but reads more of the peers' data.
    /// </summary>
    private const int OneExchangeBytes = 16 * 1024;

    /// <summary>
    /// How many more bytes of peers' data one exchange may read than reduce-scatter + all-gather, ((n-1)(n-2)/n) × size,
    /// before the extra reads cost more than the synchronisation it saves. Two ranks read the same either way; on a
    /// 16-core Xeon, 3 and 4 ranks reduced 4 KiB faster in two exchanges (medians of 6 runs: 5.4 against 7.7 us with 3
    /// ranks, 6.4 against 8.4 us with 4).
    /// </summary>
    private const int OneExchangeExtraBytes = 2048;

    /// <summary>How long a waiting rank spins before yielding when every rank can have a core of its own.</summary>
    private static readonly TimeSpan SpinPhase = TimeSpan.FromMicroseconds(50);

    private readonly TcpFabric _fabric;
    private readonly ICollectiveTransport _pointToPoint;
    private readonly MemoryMappedFile[] _files;
    private readonly MemoryMappedViewAccessor[] _views;
    private readonly byte*[] _regions;
    private readonly long _windowBytes;
    private readonly TimeSpan _timeout;
    private readonly bool _everyRankHasACore;
    private long _window;
    private string _operation = "";

    public SharedMemoryTransport(TransportContext context)
    {
        _fabric = context.Fabric;
        _pointToPoint = context.Bootstrap;
        _timeout = context.Options.Timeout;
        _windowBytes = context.Options.SharedMemoryWindowBytes / 64 * 64;
        Rank = context.Options.Rank;
        Size = context.Options.WorldSize;
        _everyRankHasACore = Size <= Environment.ProcessorCount;
        var elsewhere = Enumerable.Range(0, Size).Where(r => context.HostIds[r] != context.HostIds[Rank]).ToArray();
        if (elsewhere.Length > 0)
        {
            throw new CollectiveException(
                $"The shm backend needs every rank on one machine; ranks {string.Join(", ", elsewhere)} are on other hosts than rank {Rank}. Use tcp, ring or mesh.",
                elsewhere[0], "Init");
        }

        _files = new MemoryMappedFile[Size];
        _views = new MemoryMappedViewAccessor[Size];
        _regions = new byte*[Size];
        var length = HeaderBytes + (2 * _windowBytes);
        var ownPath = PathOf(context.Fabric.JobId, Rank);
        try
        {
            _files[Rank] = MemoryMappedFile.CreateFromFile(ownPath, FileMode.CreateNew, null, length, MemoryMappedFileAccess.ReadWrite);
            Map(Rank, length);
            *(int*)(_regions[Rank] + ProcessIdOffset) = Environment.ProcessId;
            _pointToPoint.Barrier();
            for (var peer = 0; peer < Size; peer++)
            {
                if (peer != Rank)
                {
                    _files[peer] = MemoryMappedFile.CreateFromFile(PathOf(context.Fabric.JobId, peer), FileMode.Open, null, length, MemoryMappedFileAccess.ReadWrite);
                    Map(peer, length);
                }
            }

            // Everyone has mapped everything: the names can go, so a crash later leaves nothing behind in /dev/shm.
            _pointToPoint.Barrier();
        }
        catch
        {
            Dispose();
            throw;
        }
        finally
        {
            File.Delete(ownPath);
        }
    }

    public string Name => "shm";

    public int Rank { get; }

    public int Size { get; }

    private byte* Own => _regions[Rank];

    /// <summary>Subgroups run over the TCP connections: the shared regions' sequence numbers belong to the whole group.</summary>
    public ICollectiveTransport CreateSubgroup(int[] members) => new TcpTransport(_fabric, members, TcpAlgorithm.Auto, ownsFabric: false);

    public void AllReduce(Span<byte> buffer, DType dtype, ReduceOp op)
    {
        if (!Reduction.IsSupported(dtype) || buffer.Length % dtype.SizeInBytes() != 0)
        {
            throw new ArgumentException($"AllReduce needs a whole number of f32, f16, bf16 or i32 elements; got {buffer.Length} bytes of {dtype}.");
        }

        Enter("AllReduce");
        try
        {
            var elementSize = dtype.SizeInBytes();
            var windowElements = _windowBytes / elementSize;
            Span<nint> sources = stackalloc nint[Size];
            fixed (byte* data = buffer)
            {
                if (buffer.Length <= Math.Min(OneExchangeBytes, _windowBytes) &&
                    (long)buffer.Length * (Size - 1) * (Size - 2) / Size <= OneExchangeExtraBytes)
                {
                    var whole = BeginWindow();
                    if (buffer.Length <= InlineBytes)
                    {
                        // Reused every other window, like the window buffers, so BeginWindow guards it the same way.
                        whole = SequenceOffset + sizeof(long) + ((_window & 1) * InlineBytes);
                    }

                    Buffer.MemoryCopy(data, Own + whole, buffer.Length, buffer.Length);
                    PublishAndWait(1);
                    for (var q = 0; q < Size; q++)
                    {
                        sources[q] = (nint)(_regions[q] + whole);
                    }

                    // This rank's contribution is read from the caller's buffer rather than the copy it just wrote
                    // (2 ranks, 4 KiB: 1.7 against 2.0 us in a C probe of this protocol). Only one of the first two
                    // sources can be, since the destination holds a partial sum once they are combined.
                    if (Rank < 2)
                    {
                        sources[Rank] = (nint)data;
                    }

                    // Every rank combines in rank order, so all get bit-identical sums.
                    Reduction.CombineOrdered(data, sources, buffer.Length, dtype, op);
                    _window++;
                    return;
                }

                var elements = buffer.Length / elementSize;
                for (long start = 0; start < elements; start += windowElements)
                {
                    var count = Math.Min(windowElements, elements - start);
                    var piece = data + (start * elementSize);
                    var half = BeginWindow();

                    // Peers reduce their slices from every region; this rank reads its own slice's contribution straight
                    // from the caller's buffer, so only the other slices are copied in.
                    var (offset, length) = Slice(count, Rank, elementSize);
                    var after = offset + length;
                    var total = count * elementSize;
                    Buffer.MemoryCopy(piece, Own + half, offset, offset);
                    Buffer.MemoryCopy(piece + after, Own + half + after, total - after, total - after);
                    PublishAndWait(1);

                    // The slice's sum goes into this rank's region (where peers fetch it) and from there to the caller.
                    for (var q = 0; q < Size; q++)
                    {
                        sources[q] = q == Rank ? (nint)(piece + offset) : (nint)(_regions[q] + half + offset);
                    }

                    Reduction.CombineOrdered(Own + half + offset, sources, (int)length, dtype, op);
                    Buffer.MemoryCopy(Own + half + offset, piece + offset, length, length);
                    PublishAndWait(2);
                    for (var q = 0; q < Size; q++)
                    {
                        if (q != Rank)
                        {
                            var (o, l) = Slice(count, q, elementSize);
                            Buffer.MemoryCopy(_regions[q] + half + o, piece + o, l, l);
                        }
                    }

                    _window++;
                }
            }
        }
        catch (CollectiveException)
        {
            Abort();
            throw;
        }
    }

    public void AllGather(ReadOnlySpan<byte> input, Span<byte> output)
    {
        if (output.Length != (long)input.Length * Size)
        {
            throw new ArgumentException($"AllGather output holds {output.Length} bytes; expected {Size} × {input.Length}.");
        }

        Enter("AllGather");
        try
        {
            fixed (byte* source = input)
            fixed (byte* destination = output)
            {
                for (long start = 0; start < input.Length; start += _windowBytes)
                {
                    var length = Math.Min(_windowBytes, input.Length - start);
                    var half = BeginWindow();
                    Buffer.MemoryCopy(source + start, Own + half, length, length);
                    PublishAndWait(1);
                    for (var q = 0; q < Size; q++)
                    {
                        Buffer.MemoryCopy(_regions[q] + half, destination + ((long)q * input.Length) + start, length, length);
                    }

                    Publish(2);
                    _window++;
                }
            }
        }
        catch (CollectiveException)
        {
            Abort();
            throw;
        }
    }

    public void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, ReduceOp op)
    {
        if (!Reduction.IsSupported(dtype) || output.Length % dtype.SizeInBytes() != 0 || input.Length != (long)output.Length * Size)
        {
            throw new ArgumentException($"ReduceScatter needs {Size} × {output.Length} input bytes of f32, f16, bf16 or i32; got {input.Length} of {dtype}.");
        }

        Enter("ReduceScatter");
        try
        {
            var elementSize = dtype.SizeInBytes();
            var pieceBytes = Math.Max(elementSize, _windowBytes / Size / elementSize * elementSize);
            Span<nint> sources = stackalloc nint[Size];
            fixed (byte* source = input)
            fixed (byte* destination = output)
            {
                for (long start = 0; start < output.Length; start += pieceBytes)
                {
                    var length = Math.Min(pieceBytes, output.Length - start);
                    var half = BeginWindow();
                    for (var q = 0; q < Size; q++)
                    {
                        Buffer.MemoryCopy(source + ((long)q * output.Length) + start, Own + half + (q * length), length, length);
                    }

                    PublishAndWait(1);
                    for (var q = 0; q < Size; q++)
                    {
                        sources[q] = (nint)(_regions[q] + half + (Rank * length));
                    }

                    Reduction.CombineOrdered(destination + start, sources, (int)length, dtype, op);
                    Publish(2);
                    _window++;
                }
            }
        }
        catch (CollectiveException)
        {
            Abort();
            throw;
        }
    }

    public void Broadcast(Span<byte> buffer, int root)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(root);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(root, Size);
        Enter("Broadcast");
        try
        {
            fixed (byte* data = buffer)
            {
                for (long start = 0; start < buffer.Length; start += _windowBytes)
                {
                    var length = Math.Min(_windowBytes, buffer.Length - start);
                    var half = BeginWindow();
                    if (Rank == root)
                    {
                        Buffer.MemoryCopy(data + start, Own + half, length, length);
                    }

                    PublishAndWait(1);
                    if (Rank != root)
                    {
                        Buffer.MemoryCopy(_regions[root] + half, data + start, length, length);
                    }

                    Publish(2);
                    _window++;
                }
            }
        }
        catch (CollectiveException)
        {
            Abort();
            throw;
        }
    }

    public void Send(ReadOnlySpan<byte> data, int peer) => _pointToPoint.Send(data, peer);

    public void Recv(Span<byte> data, int peer) => _pointToPoint.Recv(data, peer);

    public void Barrier()
    {
        Enter("Barrier");
        try
        {
            BeginWindow();
            PublishAndWait(1);
            Publish(2);
            _window++;
        }
        catch (CollectiveException)
        {
            Abort();
            throw;
        }
    }

    public void Dispose()
    {
        for (var q = 0; q < Size; q++)
        {
            if (_regions[q] != null)
            {
                _views[q].SafeMemoryMappedViewHandle.ReleasePointer();
                _regions[q] = null;
            }

            _views[q]?.Dispose();
            _files[q]?.Dispose();
        }
    }

    private static string PathOf(Guid jobId, int rank) => $"/dev/shm/granary-{jobId:N}-{rank}";

    private void Map(int rank, long length)
    {
        _views[rank] = _files[rank].CreateViewAccessor(0, length, MemoryMappedFileAccess.ReadWrite);
        byte* pointer = null;
        _views[rank].SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        _regions[rank] = pointer + _views[rank].PointerOffset;
    }

    private void Enter(string name)
    {
        _operation = name;
        if (_fabric.IsBroken || *(int*)(Own + AbortedOffset) != 0)
        {
            throw new CollectiveException($"{name}: the group is broken by an earlier failure; form a new group.", operation: name);
        }
    }

    /// <summary>
    /// Waits until every peer has started the previous window (so it finished reading the buffer this window reuses)
    /// and returns the offset of this window's buffer in a region.
    /// </summary>
    private long BeginWindow()
    {
        if (_window > 0)
        {
            WaitForAll((2 * _window) - 1);
        }

        return HeaderBytes + ((_window & 1) * _windowBytes);
    }

    private void Publish(int phase) => Volatile.Write(ref *(long*)(Own + SequenceOffset), (2 * _window) + phase);

    private void PublishAndWait(int phase)
    {
        Publish(phase);
        WaitForAll((2 * _window) + phase);
    }

    private void WaitForAll(long sequence)
    {
        for (var q = 0; q < Size; q++)
        {
            if (q != Rank)
            {
                WaitFor(q, sequence);
            }
        }
    }

    private void WaitFor(int peer, long sequence)
    {
        ref var peerSequence = ref *(long*)(_regions[peer] + SequenceOffset);
        if (Volatile.Read(ref peerSequence) >= sequence)
        {
            return;
        }

        var started = Stopwatch.GetTimestamp();
        var nextCheck = 0L;
        var nap = 20;
        var spinning = _everyRankHasACore;
        for (var iteration = 0; Volatile.Read(ref peerSequence) < sequence; iteration++)
        {
            // Spin while the peer is likely a moment away, yield while it may be waiting for a core, and only then
            // nap, longer each time. When ranks outnumber cores the peer is likely waiting for this very core, so
            // yield at once (3 ranks on 2 cores, 8 B: 9-10 us against 34-42 us with 512 spins first).
            if (spinning)
            {
                // The shortest spin: the peer's write is noticed within one normalised spin (~35 ns), not eight.
                Thread.SpinWait(1);
                if ((iteration & 511) == 511)
                {
                    spinning = Stopwatch.GetElapsedTime(started) < SpinPhase;
                }

                continue;
            }

            if (Stopwatch.GetElapsedTime(started) < YieldPhase)
            {
                Thread.Yield();
            }
            else
            {
                Native.SleepMicroseconds(nap);
                nap = Math.Min(1000, nap * 2);
            }

            var now = Stopwatch.GetTimestamp();
            if (now < nextCheck)
            {
                continue;
            }

            nextCheck = now + (Stopwatch.Frequency / 1000);
            if (*(int*)(_regions[peer] + AbortedOffset) != 0)
            {
                throw new CollectiveException($"{_operation}: rank {peer} failed and abandoned the group.", peer, _operation);
            }

            var processId = *(int*)(_regions[peer] + ProcessIdOffset);
            if (!Native.ProcessExists(processId))
            {
                // A peer may publish its last step and exit between the read above and this check; its mapping keeps
                // what it wrote, so only a sequence still short now means it died before getting there.
                if (Volatile.Read(ref peerSequence) >= sequence)
                {
                    return;
                }

                throw new CollectiveException($"{_operation}: rank {peer} (process {processId}) died.", peer, _operation);
            }

            if (_timeout != Timeout.InfiniteTimeSpan && Stopwatch.GetElapsedTime(started) > _timeout)
            {
                throw new CollectiveException(
                    $"{_operation}: no progress from rank {peer} for {_timeout.TotalSeconds:0.###} s; the peer stalled or died.", peer, _operation);
            }
        }
    }

    /// <summary>Tells peers waiting on this rank to give up now rather than at their timeout.</summary>
    private void Abort()
    {
        Volatile.Write(ref *(int*)(Own + AbortedOffset), 1);
        _fabric.Break();
    }

    private (long Offset, long Length) Slice(long elements, int rank, int elementSize)
    {
        var start = (elements / Size * rank) + Math.Min(rank, elements % Size);
        var length = (elements / Size) + (rank < elements % Size ? 1 : 0);
        return (start * elementSize, length * elementSize);
    }
}

internal sealed class SharedMemoryTransportFactory : ITransportFactory
{
    public string Name => "shm";

    public ICollectiveTransport Create(TransportContext context) => new SharedMemoryTransport(context);
}
