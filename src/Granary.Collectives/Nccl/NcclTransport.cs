using Granary.Tensors;
using Granary.Tensors.Cuda;
using Granary.Tensors.Cuda.Nccl;

namespace Granary.Collectives.Nccl;

/// <summary>
/// The "nccl" backend: collectives over NCCL, one process per GPU (the GPU of <see cref="CudaBackend.DeviceForRank"/>).
/// Tensors of a CUDA backend on that GPU are reduced, gathered and sent in device memory, queued on the backend's
/// stream behind the kernels that produce them (no host copy, no wait). Host spans are staged through the GPU and
/// waited for up to the group's timeout; a peer that dies or stalls then aborts the communicator and raises a
/// <see cref="CollectiveException"/>. Collectives already queued on a model's stream are not watched: a peer that dies
/// during a step surfaces at this rank's next host-side collective.
/// </summary>
internal sealed class NcclTransport : IDeviceCollectiveTransport
{
    private readonly NcclCommunicator _communicator;
    private readonly TimeSpan _timeout;

    private NcclTransport(NcclCommunicator communicator, TimeSpan timeout)
    {
        _communicator = communicator;
        _timeout = timeout;
    }

    public string Name => "nccl";

    public int Rank => _communicator.Rank;

    public int Size => _communicator.Size;

    /// <summary>
    /// Rank 0 makes the NCCL unique id and the TCP bootstrap broadcasts it; then every rank joins the communicator on
    /// its GPU, which NCCL does in a blocking call that waits for all ranks, bounded here by the connect timeout.
    /// </summary>
    public static NcclTransport Create(TransportContext context)
    {
        var options = context.Options;
        var id = new byte[NcclUniqueId.Length];
        int device;
        try
        {
            device = CudaBackend.DeviceForRank(options.Rank);
            if (options.Rank == 0)
            {
                NcclCommunicator.CreateUniqueId().ToBytes().CopyTo(id, 0);
            }
        }
        catch (Exception e) when (e is CudaException or DllNotFoundException or EntryPointNotFoundException)
        {
            throw new CollectiveException($"The nccl backend needs a CUDA GPU and NCCL on every rank; rank {options.Rank}: {e.Message}", options.Rank, "Init", e);
        }

        context.Bootstrap.Broadcast(id, root: 0);
        var join = Task.Factory.StartNew(
            () => new NcclCommunicator(device, NcclUniqueId.FromBytes(id), options.Rank, options.WorldSize),
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        try
        {
            if (!join.Wait(options.ConnectTimeout))
            {
                throw new CollectiveException(
                    $"Rank {options.Rank} could not join the NCCL communicator on GPU {device} within {options.ConnectTimeout.TotalSeconds:F0} s: a rank died or is stuck in its setup.",
                    operation: "Init");
            }
        }
        catch (AggregateException e) when (e.InnerException is CudaException or DllNotFoundException)
        {
            throw new CollectiveException($"Rank {options.Rank} could not join the NCCL communicator on GPU {device}: {e.InnerException!.Message}", options.Rank, "Init", e.InnerException);
        }

        return new NcclTransport(join.Result, options.Timeout);
    }

    public bool Supports(IComputeBackend backend) => _communicator.Supports(backend);

    public void AllReduce(Span<byte> buffer, DType dtype, ReduceOp op)
    {
        try
        {
            _communicator.AllReduce(buffer, dtype, Reduction(op), _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "AllReduce");
        }
    }

    public void AllGather(ReadOnlySpan<byte> input, Span<byte> output)
    {
        try
        {
            _communicator.AllGather(input, output, _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "AllGather");
        }
    }

    public void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, ReduceOp op)
    {
        try
        {
            _communicator.ReduceScatter(input, output, dtype, Reduction(op), _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "ReduceScatter");
        }
    }

    public void Broadcast(Span<byte> buffer, int root)
    {
        try
        {
            _communicator.Broadcast(buffer, root, _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "Broadcast");
        }
    }

    public void Send(ReadOnlySpan<byte> data, int peer)
    {
        try
        {
            _communicator.Send(data, peer, _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "Send", peer);
        }
    }

    public void Recv(Span<byte> data, int peer)
    {
        try
        {
            _communicator.Recv(data, peer, _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "Recv", peer);
        }
    }

    public void Barrier()
    {
        try
        {
            _communicator.Barrier(_timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "Barrier");
        }
    }

    /// <summary>ncclCommSplit: every rank of this transport must call it (as <see cref="Group.Split"/> does).</summary>
    public ICollectiveTransport CreateSubgroup(int[] members)
    {
        ArgumentNullException.ThrowIfNull(members);
        var key = Array.IndexOf(members, Rank);
        if (key < 0)
        {
            throw new ArgumentException($"Rank {Rank} is not among the members [{string.Join(", ", members)}].", nameof(members));
        }

        try
        {
            // Disjoint member lists: the smallest member names each subgroup.
            return new NcclTransport(_communicator.Split(members.Min(), key, _timeout), _timeout);
        }
        catch (Exception e) when (IsFailure(e))
        {
            throw Failed(e, "Split");
        }
    }

    public void AllReduce(Tensor buffer, ReduceOp op) => _communicator.AllReduce(buffer, Reduction(op));

    public void AllGather(Tensor input, Tensor output) => _communicator.AllGather(input, output);

    public void Broadcast(Tensor buffer, int root) => _communicator.Broadcast(buffer, root);

    public void Send(Tensor data, int peer) => _communicator.Send(data, peer);

    public void Recv(Tensor data, int peer) => _communicator.Recv(data, peer);

    public void Dispose() => _communicator.Dispose();

    private static NcclReduction Reduction(ReduceOp op) => op switch
    {
        ReduceOp.Sum => NcclReduction.Sum,
        ReduceOp.Max => NcclReduction.Max,
        ReduceOp.Min => NcclReduction.Min,
        _ => throw new ArgumentOutOfRangeException(nameof(op), op, "Unknown reduction."),
    };

    private static bool IsFailure(Exception e) => e is CudaException or TimeoutException;

    private CollectiveException Failed(Exception e, string operation, int? peer = null) =>
        new($"NCCL {operation} failed on rank {Rank} of {Size}: {e.Message}", peer, operation, e);
}

/// <summary>Registers "nccl" with <see cref="Group"/> (GRANARY_BACKEND=nccl, <c>granary launch --backend nccl</c>).</summary>
internal sealed class NcclTransportFactory : ITransportFactory
{
    public string Name => "nccl";

    public ICollectiveTransport Create(TransportContext context) => NcclTransport.Create(context);
}
