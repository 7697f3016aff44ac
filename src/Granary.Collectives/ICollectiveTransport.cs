using Granary.Tensors;

namespace Granary.Collectives;

/// <summary>
/// Moves host buffers between the ranks of one group. Every rank calls the same operations in the same order with
/// the same sizes; a call returns when this rank's part is done. Implementations throw <see cref="CollectiveException"/>
/// when a peer fails or stalls past the timeout, and are unusable afterwards. Ranks here are group ranks.
/// </summary>
public interface ICollectiveTransport : IDisposable
{
    /// <summary>Short name ("ring", "mesh", "tcp", "shm", ...).</summary>
    string Name { get; }

    int Rank { get; }

    int Size { get; }

    /// <summary>In place: every rank ends with op over all ranks' buffers.</summary>
    void AllReduce(Span<byte> buffer, DType dtype, ReduceOp op);

    /// <summary>output (Size × input.Length bytes) = the inputs of ranks 0..Size-1, concatenated.</summary>
    void AllGather(ReadOnlySpan<byte> input, Span<byte> output);

    /// <summary>input is Size blocks of output.Length bytes; rank r gets op over all ranks' block r.</summary>
    void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, ReduceOp op);

    /// <summary>Every rank ends with <paramref name="root"/>'s buffer.</summary>
    void Broadcast(Span<byte> buffer, int root);

    void Send(ReadOnlySpan<byte> data, int peer);

    void Recv(Span<byte> data, int peer);

    /// <summary>Returns once every rank has entered the barrier.</summary>
    void Barrier();

    /// <summary>
    /// A transport for the ranks <paramref name="members"/> (ranks of this transport, in new-rank order; this rank is
    /// among them). It may share connections with this one: the two must not run operations concurrently.
    /// </summary>
    ICollectiveTransport CreateSubgroup(int[] members);
}

/// <summary>
/// A transport that also reduces tensors in device memory (an NCCL transport over CUDA buffers) without copying
/// them to the host. <see cref="Group"/> hands it tensors of backends it <see cref="Supports"/>.
/// </summary>
public interface IDeviceCollectiveTransport : ICollectiveTransport
{
    bool Supports(IComputeBackend backend);

    void AllReduce(Tensor buffer, ReduceOp op);

    void AllGather(Tensor input, Tensor output);

    void Broadcast(Tensor buffer, int root);

    void Send(Tensor data, int peer);

    void Recv(Tensor data, int peer);
}

/// <summary>Makes the transport of a backend (register with <see cref="Group.RegisterBackend"/>).</summary>
public interface ITransportFactory
{
    /// <summary>The backend name that selects this factory (GRANARY_BACKEND, <see cref="CollectiveOptions.Backend"/>).</summary>
    string Name { get; }

    ICollectiveTransport Create(TransportContext context);
}

/// <summary>What a backend gets to build its transport: the group's place and an already connected TCP bootstrap.</summary>
public sealed class TransportContext
{
    internal TransportContext(CollectiveOptions options, Tcp.TcpFabric fabric, ICollectiveTransport bootstrap)
    {
        Options = options;
        Fabric = fabric;
        Bootstrap = bootstrap;
    }

    public CollectiveOptions Options { get; }

    /// <summary>
    /// A TCP transport over all ranks, for exchanging setup data (an NCCL unique id, RDMA queue pair numbers).
    /// It stays alive for the group's lifetime; the created transport must not use it concurrently with itself.
    /// </summary>
    public ICollectiveTransport Bootstrap { get; }

    /// <summary>Per rank, an identity of its machine; equal identities share memory.</summary>
    public IReadOnlyList<string> HostIds => Fabric.HostIds;

    internal Tcp.TcpFabric Fabric { get; }
}
