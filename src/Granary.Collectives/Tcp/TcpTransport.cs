using Granary.Tensors;

namespace Granary.Collectives.Tcp;

/// <summary>Which TCP algorithm carries reductions and gathers.</summary>
internal enum TcpAlgorithm
{
    /// <summary>Mesh up to <see cref="CollectiveOptions.SmallMessageBytes"/> (measured as that option says), ring above.</summary>
    Auto,

    /// <summary>Bandwidth-optimal: reduce-scatter then all-gather around the ring, each rank sending 2(n-1)/n of the data.</summary>
    Ring,

    /// <summary>Latency-optimal: every rank sends its whole buffer to every other in one round.</summary>
    Mesh,
}

/// <summary>Collectives over the TCP connections of a <see cref="TcpFabric"/>, for the group <c>members</c> of it.</summary>
internal sealed unsafe class TcpTransport : ICollectiveTransport
{
    /// <summary>Transfers below this size use one socket; striping pays off only for large ones.</summary>
    private const long StripeThresholdBytes = 256 << 10;

    /// <summary>Received ring data is combined in pieces of at least this size while the rest is still arriving.</summary>
    private const long CombineGranuleBytes = 64 << 10;

    private readonly TcpFabric _fabric;
    private readonly int[] _members;
    private readonly TcpAlgorithm _algorithm;
    private readonly TransferEngine _engine;
    private readonly NativeBuffer _scratch = new();
    private readonly NativeBuffer _work = new();
    private readonly bool _ownsFabric;
    private readonly long[] _stripeCombined = new long[16];
    private readonly int[] _stripeTransfer = new int[16];
    private string _operation = "";

    public TcpTransport(TcpFabric fabric, int[] members, TcpAlgorithm algorithm, bool ownsFabric)
    {
        _fabric = fabric;
        _members = members;
        _algorithm = algorithm;
        _ownsFabric = ownsFabric;
        Rank = Array.IndexOf(members, fabric.Rank);
        if (Rank < 0)
        {
            throw new ArgumentException($"World rank {fabric.Rank} is not among the members [{string.Join(", ", members)}].");
        }

        _engine = new TransferEngine(fabric.Options.Timeout);
    }

    public string Name => _algorithm switch { TcpAlgorithm.Ring => "ring", TcpAlgorithm.Mesh => "mesh", _ => "tcp" };

    public int Rank { get; }

    public int Size => _members.Length;

    private CollectiveOptions Options => _fabric.Options;

    public ICollectiveTransport CreateSubgroup(int[] members) =>
        new TcpTransport(_fabric, members.Select(m => _members[m]).ToArray(), _algorithm, ownsFabric: false);

    public void AllReduce(Span<byte> buffer, DType dtype, ReduceOp op)
    {
        RequireReducible(dtype, buffer.Length);
        Enter("AllReduce");
        try
        {
            fixed (byte* p = buffer)
            {
                if (UseMesh(buffer.Length * (Size - 1L)))
                {
                    if (UseRecursiveDoubling(dtype))
                    {
                        RecursiveDoublingAllReduce(p, buffer.Length, dtype, op);
                    }
                    else
                    {
                        MeshAllReduce(p, buffer.Length, dtype, op);
                    }
                }
                else
                {
                    RingAllReduce(p, buffer.Length, dtype, op);
                }
            }
        }
        catch (CollectiveException)
        {
            _fabric.Break();
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
            input.CopyTo(output.Slice(Rank * input.Length, input.Length));
            fixed (byte* p = output)
            {
                if (UseMesh(input.Length))
                {
                    MeshAllGather(p, input.Length);
                }
                else
                {
                    RingAllGather(p, new Segments(output.Length, Size, 1));
                }
            }
        }
        catch (CollectiveException)
        {
            _fabric.Break();
            throw;
        }
    }

    public void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, ReduceOp op)
    {
        RequireReducible(dtype, output.Length);
        if (input.Length != (long)output.Length * Size)
        {
            throw new ArgumentException($"ReduceScatter input holds {input.Length} bytes; expected {Size} × {output.Length}.");
        }

        Enter("ReduceScatter");
        try
        {
            // The ring reduces in place, and the input is read-only: work on a copy.
            var work = _work.Ensure(input.Length);
            input.CopyTo(new Span<byte>(work, input.Length));
            fixed (byte* p = output)
            {
                if (UseMesh(output.Length))
                {
                    MeshReduceScatter(work, p, output.Length, dtype, op);
                }
                else
                {
                    var elementSize = dtype.SizeInBytes();
                    RingReduceScatter(work, new Segments(input.Length / elementSize, Size, elementSize), dtype, op);
                    new ReadOnlySpan<byte>(work + ((long)Rank * output.Length), output.Length).CopyTo(output);
                }
            }
        }
        catch (CollectiveException)
        {
            _fabric.Break();
            throw;
        }
    }

    public void Broadcast(Span<byte> buffer, int root)
    {
        RequireRank(root, nameof(root));
        Enter("Broadcast");
        try
        {
            fixed (byte* p = buffer)
            {
                _engine.Begin(_operation);
                if (Rank == root)
                {
                    for (var peer = 0; peer < Size; peer++)
                    {
                        if (peer != root)
                        {
                            AddStriped(peer, p, buffer.Length, isSend: true);
                        }
                    }
                }
                else
                {
                    AddStriped(root, p, buffer.Length, isSend: false);
                }

                _engine.RunToCompletion();
            }
        }
        catch (CollectiveException)
        {
            _fabric.Break();
            throw;
        }
    }

    public void Send(ReadOnlySpan<byte> data, int peer) => PointToPoint("Send", ref System.Runtime.InteropServices.MemoryMarshal.GetReference(data), data.Length, peer, isSend: true);

    public void Recv(Span<byte> data, int peer) => PointToPoint("Recv", ref System.Runtime.InteropServices.MemoryMarshal.GetReference(data), data.Length, peer, isSend: false);

    public void Barrier()
    {
        Enter("Barrier");
        try
        {
            byte token = 0;
            var received = _scratch.Ensure(Size);
            _engine.Begin(_operation);
            for (var peer = 0; peer < Size; peer++)
            {
                if (peer != Rank)
                {
                    _engine.Add(SocketTo(peer, 0), _members[peer], &token, 1, isSend: true);
                    _engine.Add(SocketTo(peer, 0), _members[peer], received + peer, 1, isSend: false);
                }
            }

            _engine.RunToCompletion();
        }
        catch (CollectiveException)
        {
            _fabric.Break();
            throw;
        }
    }

    public void Dispose()
    {
        _scratch.Dispose();
        _work.Dispose();
        if (_ownsFabric)
        {
            _fabric.Dispose();
        }
    }

    private void PointToPoint(string name, ref byte data, int length, int peer, bool isSend)
    {
        RequireRank(peer, nameof(peer));
        if (peer == Rank)
        {
            throw new ArgumentException($"Rank {Rank} cannot send to or receive from itself.", nameof(peer));
        }

        Enter(name);
        try
        {
            fixed (byte* p = &data)
            {
                _engine.Begin(_operation);
                AddStriped(peer, p, length, isSend);
                _engine.RunToCompletion();
            }
        }
        catch (CollectiveException)
        {
            _fabric.Break();
            throw;
        }
    }

    /// <summary>A failed operation breaks every connection (so the other ranks fail fast too) and the group stays unusable.</summary>
    private void Enter(string name)
    {
        _operation = name;
        if (_fabric.IsBroken)
        {
            throw new CollectiveException($"{name}: the group is broken by an earlier failure; form a new group.", operation: name);
        }
    }

    /// <summary>
    /// Whether a collective of <paramref name="size"/> (see <see cref="CollectiveOptions.SmallMessageBytes"/>) takes the
    /// mesh. All-reduces pass (ranks - 1) × their buffer, so with more ranks the ring takes over at smaller buffers: on a
    /// 16-core host, 64 KiB took 47 us around the ring and 54 on the mesh with 3 ranks, 73 and 97 with 4.
    /// </summary>
    private bool UseMesh(long size) => _algorithm == TcpAlgorithm.Mesh || (_algorithm == TcpAlgorithm.Auto && size <= Options.SmallMessageBytes);

    private System.Net.Sockets.Socket SocketTo(int groupPeer, int index) => _fabric.Socket(_members[groupPeer], index);

    /// <summary>Queues a transfer split into contiguous stripes, one per socket to the peer.</summary>
    private int AddStriped(int groupPeer, byte* pointer, long length, bool isSend, int elementSize = 1)
    {
        var stripes = StripeCount(length);
        for (var s = 0; s < stripes; s++)
        {
            var (offset, stripeLength) = Stripe(length, stripes, s, elementSize);
            _stripeTransfer[s] = _engine.Add(SocketTo(groupPeer, s), _members[groupPeer], pointer + offset, stripeLength, isSend);
        }

        return stripes;
    }

    private int StripeCount(long length) => length >= StripeThresholdBytes ? Options.SocketsPerPeer : 1;

    private static (long Offset, long Length) Stripe(long length, int stripes, int index, int elementSize)
    {
        var elements = length / elementSize;
        var start = elements * index / stripes;
        var end = elements * (index + 1) / stripes;
        return (start * elementSize, (end - start) * elementSize);
    }

    /// <summary>The split of a buffer of <c>Elements</c> into one segment per rank, sizes differing by at most one element.</summary>
    private readonly record struct Segments(long Elements, int Count, int ElementSize)
    {
        public long Offset(int segment) => ((Elements / Count * segment) + Math.Min(segment, Elements % Count)) * ElementSize;

        public long Length(int segment) => ((Elements / Count) + (segment < Elements % Count ? 1 : 0)) * ElementSize;
    }

    private void RingAllReduce(byte* buffer, long length, DType dtype, ReduceOp op)
    {
        var elementSize = dtype.SizeInBytes();
        var windowElements = (long)Size * Math.Max(1, Options.RingSegmentBytes / elementSize);
        var elements = length / elementSize;
        for (long start = 0; start < elements; start += windowElements)
        {
            var segments = new Segments(Math.Min(windowElements, elements - start), Size, elementSize);
            var window = buffer + (start * elementSize);
            RingReduceScatter(window, segments, dtype, op);
            RingAllGather(window, segments);
        }
    }

    /// <summary>After it, segment r of <paramref name="buffer"/> on rank r holds the reduction over all ranks.</summary>
    private void RingReduceScatter(byte* buffer, Segments segments, DType dtype, ReduceOp op)
    {
        var n = Size;
        var right = (Rank + 1) % n;
        var left = (Rank + n - 1) % n;
        var scratch = _scratch.Ensure(segments.Length(0));
        for (var step = 0; step < n - 1; step++)
        {
            var sendSegment = (Rank - step - 1 + (2 * n)) % n;
            var receiveSegment = (Rank - step - 2 + (2 * n)) % n;
            var receiveLength = segments.Length(receiveSegment);
            var target = buffer + segments.Offset(receiveSegment);

            _engine.Begin(_operation);
            AddStriped(right, buffer + segments.Offset(sendSegment), segments.Length(sendSegment), isSend: true, segments.ElementSize);
            var stripes = AddStriped(left, scratch, receiveLength, isSend: false, segments.ElementSize);
            Array.Clear(_stripeCombined, 0, stripes);

            // Combine what has arrived while the rest is still in flight.
            var pending = true;
            while (pending)
            {
                pending = _engine.Pump();
                for (var s = 0; s < stripes; s++)
                {
                    var (offset, stripeLength) = Stripe(receiveLength, stripes, s, segments.ElementSize);
                    var arrived = _engine.Done(_stripeTransfer[s]) / segments.ElementSize * segments.ElementSize;
                    var combined = _stripeCombined[s];
                    if (arrived - combined >= CombineGranuleBytes || (arrived == stripeLength && arrived > combined))
                    {
                        Reduction.Combine(target + offset + combined, scratch + offset + combined, arrived - combined, dtype, op);
                        _stripeCombined[s] = arrived;
                    }
                }
            }
        }
    }

    /// <summary>Given segment r complete on rank r, leaves every segment complete on every rank.</summary>
    private void RingAllGather(byte* buffer, Segments segments)
    {
        var n = Size;
        var right = (Rank + 1) % n;
        var left = (Rank + n - 1) % n;
        for (var step = 0; step < n - 1; step++)
        {
            var sendSegment = (Rank - step + n) % n;
            var receiveSegment = (Rank - step - 1 + n) % n;
            _engine.Begin(_operation);
            AddStriped(right, buffer + segments.Offset(sendSegment), segments.Length(sendSegment), isSend: true, segments.ElementSize);
            AddStriped(left, buffer + segments.Offset(receiveSegment), segments.Length(receiveSegment), isSend: false, segments.ElementSize);
            _engine.RunToCompletion();
        }
    }

    private void MeshAllReduce(byte* buffer, int length, DType dtype, ReduceOp op)
    {
        var window = Math.Max(Options.SmallMessageBytes, Options.RingSegmentBytes) / dtype.SizeInBytes() * dtype.SizeInBytes();
        var slots = _scratch.Ensure((long)Size * Math.Min(window, length));
        Span<nint> pointers = stackalloc nint[Size];
        for (var start = 0; start < length; start += window)
        {
            var piece = Math.Min(window, length - start);
            var data = buffer + start;
            Buffer.MemoryCopy(data, slots + ((long)Rank * piece), piece, piece);
            _engine.Begin(_operation);
            for (var peer = 0; peer < Size; peer++)
            {
                if (peer != Rank)
                {
                    AddStriped(peer, data, piece, isSend: true);
                    AddStriped(peer, slots + ((long)peer * piece), piece, isSend: false);
                }
            }

            _engine.RunToCompletion();
            Reduction.CombineOrdered(data, SlotPointers(slots, piece, pointers), piece, dtype, op);
        }
    }

    /// <summary>
    /// Small all-reduces on 4, 8, ... ranks under <see cref="TcpAlgorithm.Auto"/>: log2(n) rounds of swapping the whole
    /// buffer with one partner send log2(n) copies of it, the mesh n - 1 in one round (with 4 ranks on a 16-core host
    /// the mesh took 19-30 us for 8 B-4 KiB, Open MPI's recursive doubling 19-21). Only for f32 and i32: a round would
    /// round f16 and bf16 partial sums, which the mesh and ring accumulate in f32.
    /// </summary>
    private bool UseRecursiveDoubling(DType dtype) =>
        _algorithm == TcpAlgorithm.Auto && Size > 2 && (Size & (Size - 1)) == 0 && dtype is DType.F32 or DType.I32;

    private void RecursiveDoublingAllReduce(byte* buffer, int length, DType dtype, ReduceOp op)
    {
        if (length == 0)
        {
            return;
        }

        var received = _scratch.Ensure(length);
        for (var distance = 1; distance < Size; distance <<= 1)
        {
            var partner = Rank ^ distance;
            _engine.Begin(_operation);
            AddStriped(partner, buffer, length, isSend: true);
            AddStriped(partner, received, length, isSend: false);
            _engine.RunToCompletion();

            // The partners combine the same two values (a + b = b + a exactly), so every rank ends with the same bits.
            Reduction.Combine(buffer, received, length, dtype, op);
        }
    }

    private void MeshAllGather(byte* output, int blockLength)
    {
        var own = output + ((long)Rank * blockLength);
        _engine.Begin(_operation);
        for (var peer = 0; peer < Size; peer++)
        {
            if (peer != Rank)
            {
                AddStriped(peer, own, blockLength, isSend: true);
                AddStriped(peer, output + ((long)peer * blockLength), blockLength, isSend: false);
            }
        }

        _engine.RunToCompletion();
    }

    private void MeshReduceScatter(byte* input, byte* output, int blockLength, DType dtype, ReduceOp op)
    {
        var slots = _scratch.Ensure((long)Size * blockLength);
        Buffer.MemoryCopy(input + ((long)Rank * blockLength), slots + ((long)Rank * blockLength), blockLength, blockLength);
        _engine.Begin(_operation);
        for (var peer = 0; peer < Size; peer++)
        {
            if (peer != Rank)
            {
                AddStriped(peer, input + ((long)peer * blockLength), blockLength, isSend: true);
                AddStriped(peer, slots + ((long)peer * blockLength), blockLength, isSend: false);
            }
        }

        _engine.RunToCompletion();
        Reduction.CombineOrdered(output, SlotPointers(slots, blockLength, stackalloc nint[Size]), blockLength, dtype, op);
    }

    private static ReadOnlySpan<nint> SlotPointers(byte* slots, long stride, Span<nint> pointers)
    {
        for (var k = 0; k < pointers.Length; k++)
        {
            pointers[k] = (nint)(slots + (k * stride));
        }

        return pointers;
    }

    private void RequireReducible(DType dtype, int length)
    {
        if (!Reduction.IsSupported(dtype))
        {
            throw new NotSupportedException($"Reductions over {dtype} are not supported (f32, f16, bf16, i32 are).");
        }

        if (length % dtype.SizeInBytes() != 0)
        {
            throw new ArgumentException($"A buffer of {length} bytes is not a whole number of {dtype} elements.");
        }
    }

    private void RequireRank(int rank, string name)
    {
        if (rank < 0 || rank >= Size)
        {
            throw new ArgumentOutOfRangeException(name, rank, $"Rank must be in [0, {Size}).");
        }
    }
}
