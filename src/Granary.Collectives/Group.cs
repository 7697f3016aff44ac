using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Granary.Collectives.SharedMemory;
using Granary.Collectives.Tcp;
using Granary.Tensors;
using Granary.Tensors.Cpu;

namespace Granary.Collectives;

/// <summary>
/// A set of ranks that run collectives together, like <c>mx.distributed.Group</c>. Every rank calls the same
/// operations in the same order with the same sizes. Supported element types: f32 (<see cref="float"/>),
/// f16 (<see cref="Half"/>), i32 (<see cref="int"/>), and bf16 through the byte overloads with <see cref="DType.BF16"/>.
/// A group is not thread-safe, and a group made by <see cref="Split"/> must not run concurrently with its parent.
/// </summary>
public sealed class Group : IDisposable
{
    private static readonly ConcurrentDictionary<string, ITransportFactory> Factories = new(StringComparer.OrdinalIgnoreCase);

    private readonly ICollectiveTransport _transport;
    private readonly ICollectiveTransport? _bootstrap;

    static Group()
    {
        foreach (var factory in new ITransportFactory[]
                 {
                     new TcpTransportFactory("tcp", TcpAlgorithm.Auto),
                     new TcpTransportFactory("ring", TcpAlgorithm.Ring),
                     new TcpTransportFactory("mesh", TcpAlgorithm.Mesh),
                     new SharedMemoryTransportFactory(),
                     new Nccl.NcclTransportFactory(),
                 })
        {
            Factories[factory.Name] = factory;
        }
    }

    private Group(ICollectiveTransport transport, ICollectiveTransport? bootstrap)
    {
        _transport = transport;
        _bootstrap = bootstrap;
    }

    public int Rank => _transport.Rank;

    public int Size => _transport.Size;

    /// <summary>The backend carrying this group's data ("ring", "mesh", "tcp", "shm", ...).</summary>
    public string Backend => _transport.Name;

    /// <summary>The transport underneath, for code that moves raw bytes.</summary>
    public ICollectiveTransport Transport => _transport;

    /// <summary>Makes a backend available by name (an NCCL or RDMA transport living in another assembly).</summary>
    public static void RegisterBackend(ITransportFactory factory) => Factories[factory.Name] = factory;

    /// <summary>
    /// Forms the world group from the environment `granary launch` sets (<see cref="DistributedEnvironment"/>).
    /// Without it the process is a group of one, unless <paramref name="strict"/>, which then throws.
    /// <paramref name="backend"/> overrides GRANARY_BACKEND.
    /// </summary>
    public static Group Init(bool strict = false, string? backend = null)
    {
        var options = CollectiveOptions.FromEnvironment();
        if (options is null)
        {
            if (strict)
            {
                throw new CollectiveException(
                    $"No distributed group to join: {DistributedEnvironment.Rank}, {DistributedEnvironment.WorldSize} and {DistributedEnvironment.Hostfile} are unset " +
                    "(start the program with `granary launch`).", operation: "Init");
            }

            options = new CollectiveOptions();
        }

        if (backend is not null)
        {
            options.Backend = backend;
        }

        return Init(options);
    }

    /// <summary>Forms a group from explicit options: every rank calls this with its own rank and the same coordinator.</summary>
    public static Group Init(CollectiveOptions options)
    {
        options = options.Clone();
        options.Validate();
        var name = options.Backend.ToLowerInvariant() is "auto" or "any" ? null : options.Backend;
        if (name is not null && !Factories.ContainsKey(name))
        {
            throw new ArgumentException($"Unknown collective backend '{options.Backend}'; known: auto, {string.Join(", ", Factories.Keys.Order())}.");
        }

        return Create(options, name, TcpFabric.Connect(options));
    }

    /// <summary>
    /// Forms a group from a peer table exchanged by the caller instead of through a coordinator rank: every rank binds
    /// its <paramref name="listener"/> first, the endpoints are gathered and handed out (in rank order) by some
    /// control plane, then every rank calls this with the same <paramref name="peers"/> and <paramref name="groupId"/>.
    /// <see cref="CollectiveOptions.Rank"/> and <see cref="CollectiveOptions.WorldSize"/> must match the table; the
    /// listener is taken over. <see cref="CollectiveOptions.Coordinator"/> and <see cref="CollectiveOptions.Hosts"/> are not used.
    /// </summary>
    public static Group Init(CollectiveOptions options, DataPlaneListener listener, IReadOnlyList<DataPlanePeer> peers, Guid groupId)
    {
        ArgumentNullException.ThrowIfNull(listener);
        ArgumentNullException.ThrowIfNull(peers);
        options = options.Clone();
        options.Hosts = null;
        options.Validate();
        if (peers.Count != options.WorldSize)
        {
            throw new ArgumentException($"The peer table lists {peers.Count} ranks but the world size is {options.WorldSize}.", nameof(peers));
        }

        if (peers[options.Rank] != listener.Endpoint)
        {
            throw new ArgumentException($"Rank {options.Rank} of the peer table is {peers[options.Rank]}, not this listener's {listener.Endpoint}.", nameof(peers));
        }

        var name = options.Backend.ToLowerInvariant() is "auto" or "any" ? null : options.Backend;
        if (name is not null && !Factories.ContainsKey(name))
        {
            throw new ArgumentException($"Unknown collective backend '{options.Backend}'; known: auto, {string.Join(", ", Factories.Keys.Order())}.");
        }

        return Create(options, name, TcpFabric.ConnectToPeers(options, listener.Take(), peers, groupId));
    }

    private static Group Create(CollectiveOptions options, string? name, TcpFabric fabric)
    {
        var bootstrap = new TcpTransport(fabric, Enumerable.Range(0, options.WorldSize).ToArray(), TcpAlgorithm.Mesh, ownsFabric: true);
        try
        {
            name ??= options.WorldSize > 1 && fabric.HostIds.All(h => h == fabric.HostIds[0]) ? "shm" : "tcp";
            var transport = Factories[name].Create(new TransportContext(options, fabric, bootstrap));
            return new Group(transport, bootstrap);
        }
        catch
        {
            bootstrap.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Splits the group: ranks passing the same <paramref name="color"/> form a new group, ordered by
    /// <paramref name="key"/> (default: their rank here), ties broken by rank. Every rank must call it.
    /// </summary>
    public Group Split(int color, int key = -1)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(color);
        Span<int> mine = [color, key < 0 ? Rank : key];
        var all = new int[2 * Size];
        AllGather<int>(mine, all);
        var members = Enumerable.Range(0, Size)
            .Where(r => all[2 * r] == color)
            .OrderBy(r => all[(2 * r) + 1])
            .ThenBy(r => r)
            .ToArray();
        return new Group(_transport.CreateSubgroup(members), bootstrap: null);
    }

    public void AllSum<T>(Span<T> buffer) where T : unmanaged => AllReduce(buffer, ReduceOp.Sum);

    public void AllMax<T>(Span<T> buffer) where T : unmanaged => AllReduce(buffer, ReduceOp.Max);

    public void AllMin<T>(Span<T> buffer) where T : unmanaged => AllReduce(buffer, ReduceOp.Min);

    /// <summary>output = sum over ranks of input; input and output may be the same memory.</summary>
    public void AllSum<T>(ReadOnlySpan<T> input, Span<T> output) where T : unmanaged
    {
        CopyIfDistinct(input, output);
        AllReduce(output, ReduceOp.Sum);
    }

    public void AllReduce<T>(Span<T> buffer, ReduceOp op) where T : unmanaged =>
        _transport.AllReduce(MemoryMarshal.AsBytes(buffer), DTypeOf<T>(), op);

    /// <summary>Raw overload: <paramref name="buffer"/> holds elements of <paramref name="dtype"/> (the way to pass bf16).</summary>
    public void AllReduce(Span<byte> buffer, DType dtype, ReduceOp op) => _transport.AllReduce(buffer, dtype, op);

    /// <summary>output (Size × input.Length) = the inputs of all ranks in rank order.</summary>
    public void AllGather<T>(ReadOnlySpan<T> input, Span<T> output) where T : unmanaged =>
        _transport.AllGather(MemoryMarshal.AsBytes(input), MemoryMarshal.AsBytes(output));

    /// <summary>input is Size blocks of output.Length; rank r gets the sum over ranks of block r.</summary>
    public void ReduceScatter<T>(ReadOnlySpan<T> input, Span<T> output, ReduceOp op = ReduceOp.Sum) where T : unmanaged =>
        _transport.ReduceScatter(MemoryMarshal.AsBytes(input), MemoryMarshal.AsBytes(output), DTypeOf<T>(), op);

    public void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, ReduceOp op = ReduceOp.Sum) =>
        _transport.ReduceScatter(input, output, dtype, op);

    public void Broadcast<T>(Span<T> buffer, int root) where T : unmanaged => _transport.Broadcast(MemoryMarshal.AsBytes(buffer), root);

    public void Send<T>(ReadOnlySpan<T> data, int peer) where T : unmanaged => _transport.Send(MemoryMarshal.AsBytes(data), peer);

    public void Recv<T>(Span<T> data, int peer) where T : unmanaged => _transport.Recv(MemoryMarshal.AsBytes(data), peer);

    public void Barrier() => _transport.Barrier();

    public void AllSum(Tensor tensor) => AllReduce(tensor, ReduceOp.Sum);

    public void AllMax(Tensor tensor) => AllReduce(tensor, ReduceOp.Max);

    public void AllMin(Tensor tensor) => AllReduce(tensor, ReduceOp.Min);

    /// <summary>
    /// In place on a tensor: CPU tensors are reduced in their memory; other backends' tensors need a transport that
    /// handles their device memory (<see cref="IDeviceCollectiveTransport"/>).
    /// </summary>
    public void AllReduce(Tensor tensor, ReduceOp op)
    {
        if (Device(tensor) is { } device)
        {
            device.AllReduce(tensor, op);
            return;
        }

        _transport.AllReduce(HostBytes(tensor), tensor.DType, op);
    }

    /// <summary>output holds Size × input's elements: the inputs of all ranks in rank order (along the first axis).</summary>
    public void AllGather(Tensor input, Tensor output)
    {
        RequireSameDType(input, output);
        if (Device(input) is { } device && device.Supports(output.Backend))
        {
            device.AllGather(input, output);
            return;
        }

        _transport.AllGather(HostBytes(input), HostBytes(output));
    }

    /// <summary>input holds Size × output's elements; rank r gets op over ranks of the r-th block.</summary>
    public void ReduceScatter(Tensor input, Tensor output, ReduceOp op = ReduceOp.Sum)
    {
        RequireSameDType(input, output);
        _transport.ReduceScatter(HostBytes(input), HostBytes(output), input.DType, op);
    }

    public void Broadcast(Tensor tensor, int root)
    {
        if (Device(tensor) is { } device)
        {
            device.Broadcast(tensor, root);
            return;
        }

        _transport.Broadcast(HostBytes(tensor), root);
    }

    public void Send(Tensor tensor, int peer)
    {
        if (Device(tensor) is { } device)
        {
            device.Send(tensor, peer);
            return;
        }

        _transport.Send(HostBytes(tensor), peer);
    }

    public void Recv(Tensor tensor, int peer)
    {
        if (Device(tensor) is { } device)
        {
            device.Recv(tensor, peer);
            return;
        }

        _transport.Recv(HostBytes(tensor), peer);
    }

    public void Dispose()
    {
        _transport.Dispose();
        if (!ReferenceEquals(_transport, _bootstrap))
        {
            _bootstrap?.Dispose();
        }
    }

    private IDeviceCollectiveTransport? Device(Tensor tensor) =>
        tensor.Backend is not CpuBackend && _transport is IDeviceCollectiveTransport device && device.Supports(tensor.Backend) ? device : null;

    private static unsafe Span<byte> HostBytes(Tensor tensor)
    {
        if (tensor.Backend is not CpuBackend)
        {
            throw new NotSupportedException(
                $"{tensor} lives in {tensor.Backend.Name} memory and this group's transport cannot reach it; use a device transport (such as nccl) or download it.");
        }

        if (tensor.ByteLength > int.MaxValue)
        {
            throw new NotSupportedException($"{tensor} is larger than 2 GiB; reduce it in slices.");
        }

        return new Span<byte>(CpuBackend.PointerOf(tensor), (int)tensor.ByteLength);
    }

    private static void RequireSameDType(Tensor a, Tensor b)
    {
        if (a.DType != b.DType)
        {
            throw new ArgumentException($"Tensors {a} and {b} differ in dtype.");
        }
    }

    internal static DType DTypeOf<T>() where T : unmanaged =>
        typeof(T) == typeof(float) ? DType.F32
        : typeof(T) == typeof(Half) ? DType.F16
        : typeof(T) == typeof(int) ? DType.I32
        : typeof(T) == typeof(uint) ? DType.U32
        : typeof(T) == typeof(byte) ? DType.U8
        : typeof(T) == typeof(long) ? DType.I64
        : throw new NotSupportedException($"No dtype for {typeof(T).Name}; use float, Half, int, or the byte overloads with a DType.");

    private static void CopyIfDistinct<T>(ReadOnlySpan<T> input, Span<T> output) where T : unmanaged
    {
        if (input.Length != output.Length)
        {
            throw new ArgumentException($"Input has {input.Length} elements, output {output.Length}.");
        }

        if (!Unsafe.AreSame(ref MemoryMarshal.GetReference(input), ref MemoryMarshal.GetReference(output)))
        {
            input.CopyTo(output);
        }
    }

    private sealed class TcpTransportFactory(string name, TcpAlgorithm algorithm) : ITransportFactory
    {
        public string Name => name;

        public ICollectiveTransport Create(TransportContext context) =>
            new TcpTransport(context.Fabric, Enumerable.Range(0, context.Options.WorldSize).ToArray(), algorithm, ownsFabric: false);
    }
}
