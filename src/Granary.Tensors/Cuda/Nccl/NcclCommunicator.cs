using System.Runtime.InteropServices;

namespace Granary.Tensors.Cuda.Nccl;

/// <summary>The reduction of an NCCL collective (ncclRedOp_t).</summary>
public enum NcclReduction
{
    Sum = 0,
    Product = 1,
    Max = 2,
    Min = 3,
    Average = 4,
}

/// <summary>
/// One rank of an NCCL communicator on one GPU: one process (or thread) per GPU. Collectives on CUDA tensors are
/// queued on the stream of the tensor's <see cref="CudaBackend"/>, in order with its kernels, so a tensor-parallel step
/// makes no host round trip; the host-span overloads stage the bytes through device memory on the communicator's own
/// stream and wait (with a timeout) for the result. Work queued on different streams is chained through an event, so
/// every rank's GPU runs the collectives in the order they were issued, as NCCL requires. Rank 0 makes the
/// <see cref="NcclUniqueId"/> and a bootstrap (Granary's TCP group) hands it to the other ranks before each calls the
/// constructor. NVLink SHARP (NVLS) is disabled: see <see cref="DisableNvls"/>.
/// </summary>
public sealed unsafe class NcclCommunicator : IDisposable
{
    private const int InProgress = 7;

    private readonly IntPtr _context;
    private readonly int _deviceHandle;
    private readonly IntPtr _stream;
    private readonly IntPtr _orderEvent;
    private IntPtr _communicator;
    private IntPtr _lastStream;
    private ulong _staging;
    private long _stagingBytes;

    /// <summary>Joins the communicator <paramref name="id"/> as <paramref name="rank"/> of <paramref name="size"/> on the GPU of <paramref name="backend"/>; blocks until all ranks joined.</summary>
    public NcclCommunicator(CudaBackend backend, NcclUniqueId id, int rank, int size)
        : this(RequireBackend(backend).Device, id, rank, size)
    {
    }

    /// <summary>Joins the communicator <paramref name="id"/> as <paramref name="rank"/> of <paramref name="size"/> on GPU <paramref name="device"/>; blocks until all ranks joined.</summary>
    public NcclCommunicator(int device, NcclUniqueId id, int rank, int size)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, size);
        DisableNvls();
        (_context, _deviceHandle, _stream, _orderEvent) = OpenDevice(device);
        try
        {
            IntPtr communicator;
            NcclNative.Check(NcclNative.ncclCommInitRank(&communicator, size, id, rank), "ncclCommInitRank");
            _communicator = communicator;
        }
        catch
        {
            ReleaseDevice();
            throw;
        }

        Device = device;
        Rank = rank;
        Size = size;
    }

    private NcclCommunicator(int device, IntPtr communicator, int rank, int size)
    {
        (_context, _deviceHandle, _stream, _orderEvent) = OpenDevice(device);
        _communicator = communicator;
        Device = device;
        Rank = rank;
        Size = size;
    }

    /// <summary>The ordinal of the GPU this rank runs on.</summary>
    public int Device { get; }

    public int Rank { get; }

    public int Size { get; }

    /// <summary>A fresh id for a new communicator (rank 0 makes it and sends its <see cref="NcclUniqueId.ToBytes"/> to the others).</summary>
    public static NcclUniqueId CreateUniqueId()
    {
        CudaLibraries.EnsureRegistered();
        DisableNvls();
        NcclUniqueId id;
        NcclNative.Check(NcclNative.ncclGetUniqueId(&id), "ncclGetUniqueId");
        return id;
    }

    /// <summary>
    /// Communicators for several GPUs of this process at once (ncclCommInitAll): rank r runs on GPU
    /// <paramref name="devices"/>[r]. The way to test several ranks in one process; each GPU appears once.
    /// </summary>
    public static NcclCommunicator[] CreateAll(IReadOnlyList<int> devices)
    {
        ArgumentNullException.ThrowIfNull(devices);
        CudaLibraries.EnsureRegistered();
        DisableNvls();
        var ordinals = devices.ToArray();
        var handles = new IntPtr[ordinals.Length];
        fixed (IntPtr* communicators = handles)
        fixed (int* list = ordinals)
        {
            NcclNative.Check(NcclNative.ncclCommInitAll(communicators, ordinals.Length, list), "ncclCommInitAll");
        }

        return [.. ordinals.Select((device, rank) => new NcclCommunicator(device, handles[rank], rank, ordinals.Length))];
    }

    /// <summary>
    /// Brackets collectives issued by one thread for several communicators of this process (those of
    /// <see cref="CreateAll"/>): NCCL launches them together at <see cref="GroupEnd"/> instead of waiting on each.
    /// </summary>
    public static void GroupStart() => NcclNative.Check(NcclNative.ncclGroupStart(), "ncclGroupStart");

    public static void GroupEnd() => NcclNative.Check(NcclNative.ncclGroupEnd(), "ncclGroupEnd");

    /// <summary>
    /// NVLink multicast (NVLS) can take a shared host's GPUs out of service; NCCL reads NCCL_NVLS_ENABLE when a
    /// communicator is made, so it is set to 0 here unless the caller already chose.
    /// </summary>
    public static void DisableNvls()
    {
        if (Environment.GetEnvironmentVariable("NCCL_NVLS_ENABLE") is null)
        {
            Environment.SetEnvironmentVariable("NCCL_NVLS_ENABLE", "0");
            NcclNative.setenv("NCCL_NVLS_ENABLE", "0", 0);
        }
    }

    /// <summary>Whether collectives can run on tensors of <paramref name="backend"/>: a CUDA backend on this GPU.</summary>
    public bool Supports(IComputeBackend backend) => backend is CudaBackend cuda && cuda.Device == Device;

    /// <summary>
    /// Collectives of a subset of the ranks (ncclCommSplit): ranks passing the same <paramref name="color"/> form one
    /// communicator, ordered by <paramref name="key"/>. Every rank of this communicator must call it; the collectives
    /// queued before are waited for first, up to <paramref name="timeout"/>.
    /// </summary>
    public NcclCommunicator Split(int color, int key, TimeSpan timeout)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(color);
        AwaitQueued(timeout, "ncclCommSplit");
        IntPtr split;
        int rank, size;
        NcclNative.Check(NcclNative.ncclCommSplit(Handle, color, key, &split, null), "ncclCommSplit");
        NcclNative.Check(NcclNative.ncclCommUserRank(split, &rank), "ncclCommUserRank");
        NcclNative.Check(NcclNative.ncclCommCount(split, &size), "ncclCommCount");
        return new NcclCommunicator(Device, split, rank, size);
    }

    /// <summary>In place: every rank ends with the reduction over all ranks' <paramref name="buffer"/>.</summary>
    public void AllReduce(Tensor buffer, NcclReduction reduction = NcclReduction.Sum)
    {
        var (pointer, stream) = (CudaBackend.PointerOf(buffer), Enqueue(buffer));
        Run(NcclNative.ncclAllReduce(pointer, pointer, (nuint)buffer.ElementCount, DataType(buffer.DType), (int)reduction, Handle, stream), "ncclAllReduce");
    }

    /// <summary>Every rank ends with <paramref name="root"/>'s <paramref name="buffer"/>.</summary>
    public void Broadcast(Tensor buffer, int root)
    {
        var (pointer, stream) = (CudaBackend.PointerOf(buffer), Enqueue(buffer));
        Run(NcclNative.ncclBroadcast(pointer, pointer, (nuint)buffer.ElementCount, DataType(buffer.DType), root, Handle, stream), "ncclBroadcast");
    }

    /// <summary><paramref name="output"/> (Size × input elements) = the inputs of ranks 0..Size-1, concatenated.</summary>
    public void AllGather(Tensor input, Tensor output)
    {
        RequireSizes(input, output, Size);
        var stream = Enqueue(input, output);
        Run(
            NcclNative.ncclAllGather(CudaBackend.PointerOf(input), CudaBackend.PointerOf(output), (nuint)input.ElementCount, DataType(input.DType), Handle, stream),
            "ncclAllGather");
    }

    /// <summary><paramref name="input"/> is Size blocks of output's size; rank r gets the reduction of every rank's block r.</summary>
    public void ReduceScatter(Tensor input, Tensor output, NcclReduction reduction = NcclReduction.Sum)
    {
        RequireSizes(output, input, Size);
        var stream = Enqueue(input, output);
        Run(
            NcclNative.ncclReduceScatter(
                CudaBackend.PointerOf(input), CudaBackend.PointerOf(output), (nuint)output.ElementCount, DataType(input.DType), (int)reduction, Handle, stream),
            "ncclReduceScatter");
    }

    public void Send(Tensor data, int peer)
    {
        var stream = Enqueue(data);
        Run(NcclNative.ncclSend(CudaBackend.PointerOf(data), (nuint)data.ElementCount, DataType(data.DType), peer, Handle, stream), "ncclSend");
    }

    public void Recv(Tensor data, int peer)
    {
        var stream = Enqueue(data);
        Run(NcclNative.ncclRecv(CudaBackend.PointerOf(data), (nuint)data.ElementCount, DataType(data.DType), peer, Handle, stream), "ncclRecv");
    }

    /// <summary>In place on host memory, staged through the GPU; waits up to <paramref name="timeout"/> for the peers.</summary>
    public void AllReduce(Span<byte> buffer, DType dtype, NcclReduction reduction, TimeSpan timeout)
    {
        var count = ElementCount(buffer.Length, dtype);
        var device = Stage(buffer, buffer.Length, 0);
        Run(NcclNative.ncclAllReduce(device, device, (nuint)count, DataType(dtype), (int)reduction, Handle, _stream), "ncclAllReduce");
        Unstage(device, buffer, timeout, "ncclAllReduce");
    }

    /// <summary>Host overload of <see cref="AllGather(Tensor, Tensor)"/> (bytes), staged through the GPU.</summary>
    public void AllGather(ReadOnlySpan<byte> input, Span<byte> output, TimeSpan timeout)
    {
        if ((long)input.Length * Size != output.Length)
        {
            throw new ArgumentException($"AllGather of {input.Length} bytes over {Size} ranks needs {(long)input.Length * Size} output bytes, got {output.Length}.");
        }

        // In place: this rank's block already sits where the gathered result puts it.
        var device = Stage(input, output.Length, (long)Rank * input.Length);
        Run(NcclNative.ncclAllGather(device + (ulong)((long)Rank * input.Length), device, (nuint)input.Length, DataType(DType.U8), Handle, _stream), "ncclAllGather");
        Unstage(device, output, timeout, "ncclAllGather");
    }

    /// <summary>Host overload of <see cref="ReduceScatter(Tensor, Tensor, NcclReduction)"/>, staged through the GPU.</summary>
    public void ReduceScatter(ReadOnlySpan<byte> input, Span<byte> output, DType dtype, NcclReduction reduction, TimeSpan timeout)
    {
        if ((long)output.Length * Size != input.Length)
        {
            throw new ArgumentException($"ReduceScatter of {input.Length} bytes over {Size} ranks gives {input.Length / Size} bytes a rank, not {output.Length}.");
        }

        var count = ElementCount(output.Length, dtype);
        var device = Stage(input, input.Length, 0);
        var own = device + (ulong)((long)Rank * output.Length);
        Run(NcclNative.ncclReduceScatter(device, own, (nuint)count, DataType(dtype), (int)reduction, Handle, _stream), "ncclReduceScatter");
        Unstage(own, output, timeout, "ncclReduceScatter");
    }

    /// <summary>Host overload of <see cref="Broadcast(Tensor, int)"/>, staged through the GPU.</summary>
    public void Broadcast(Span<byte> buffer, int root, TimeSpan timeout)
    {
        var device = Stage(buffer, buffer.Length, 0);
        Run(NcclNative.ncclBroadcast(device, device, (nuint)buffer.Length, DataType(DType.U8), root, Handle, _stream), "ncclBroadcast");
        Unstage(device, buffer, timeout, "ncclBroadcast");
    }

    /// <summary>Host overload of <see cref="Send(Tensor, int)"/>: returns once the peer has received the bytes.</summary>
    public void Send(ReadOnlySpan<byte> data, int peer, TimeSpan timeout)
    {
        var device = Stage(data, data.Length, 0);
        Run(NcclNative.ncclSend(device, (nuint)data.Length, DataType(DType.U8), peer, Handle, _stream), "ncclSend");
        AwaitQueued(timeout, "ncclSend");
    }

    public void Recv(Span<byte> data, int peer, TimeSpan timeout)
    {
        var device = Stage(ReadOnlySpan<byte>.Empty, data.Length, 0);
        Run(NcclNative.ncclRecv(device, (nuint)data.Length, DataType(DType.U8), peer, Handle, _stream), "ncclRecv");
        Unstage(device, data, timeout, "ncclRecv");
    }

    /// <summary>Returns once every rank has reached it (and this rank's queued collectives have run).</summary>
    public void Barrier(TimeSpan timeout)
    {
        Span<byte> token = stackalloc byte[4];
        AllReduce(token, DType.I32, NcclReduction.Sum, timeout);
    }

    /// <summary>
    /// Waits until every collective queued so far (on any stream) has run, up to <paramref name="timeout"/>; on timeout
    /// or a peer's failure the communicator is aborted and a <see cref="TimeoutException"/> or <see cref="CudaException"/> thrown.
    /// </summary>
    public void AwaitQueued(TimeSpan timeout, string operation)
    {
        Order(_stream);
        Wait(timeout, operation);
    }

    /// <summary>Stops this rank's part of the communicator at once (its queued collectives fail); the communicator is unusable afterwards.</summary>
    public void Abort()
    {
        if (_communicator != IntPtr.Zero)
        {
            _ = NcclNative.ncclCommAbort(_communicator);
            _communicator = IntPtr.Zero;
        }
    }

    public void Dispose()
    {
        if (_communicator != IntPtr.Zero)
        {
            CudaBackend.MakeCurrent(_context);
            if (_lastStream == _stream)
            {
                _ = Driver.cuStreamSynchronize(_stream);
            }

            _ = NcclNative.ncclCommDestroy(_communicator);
            _communicator = IntPtr.Zero;
        }

        ReleaseDevice();
    }

    private IntPtr Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(_communicator == IntPtr.Zero, this);
            CudaBackend.MakeCurrent(_context);
            return _communicator;
        }
    }

    private static CudaBackend RequireBackend(CudaBackend backend)
    {
        ArgumentNullException.ThrowIfNull(backend);
        return backend;
    }

    private static (IntPtr Context, int Handle, IntPtr Stream, IntPtr Event) OpenDevice(int device)
    {
        CudaLibraries.EnsureRegistered();
        CudaLibraries.Load(CudaLibraries.Driver);
        Driver.Check(Driver.cuInit(0), "cuInit");
        int handle;
        Driver.Check(Driver.cuDeviceGet(&handle, device), $"cuDeviceGet({device})");
        IntPtr context, stream, orderEvent;
        Driver.Check(Driver.cuDevicePrimaryCtxRetain(&context, handle), "cuDevicePrimaryCtxRetain");
        CudaBackend.MakeCurrent(context);
        Driver.Check(Driver.cuStreamCreate(&stream, Driver.CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        Driver.Check(Driver.cuEventCreate(&orderEvent, Driver.CU_EVENT_DISABLE_TIMING), "cuEventCreate");
        return (context, handle, stream, orderEvent);
    }

    private void ReleaseDevice()
    {
        CudaBackend.MakeCurrent(_context);
        if (_staging != 0)
        {
            _ = Driver.cuMemFreeAsync(_staging, _stream);
            _staging = 0;
        }

        _ = Driver.cuStreamSynchronize(_stream);
        _ = Driver.cuEventDestroy_v2(_orderEvent);
        _ = Driver.cuStreamDestroy_v2(_stream);
        _ = Driver.cuDevicePrimaryCtxRelease_v2(_deviceHandle);
    }

    /// <summary>The stream the tensors' backend queues on, after ordering it behind the last collective.</summary>
    private IntPtr Enqueue(Tensor tensor, Tensor? other = null)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Backend is not CudaBackend backend || !Supports(backend))
        {
            throw new ArgumentException($"{tensor} is not a tensor of a CUDA backend on GPU {Device}, where this communicator runs.", nameof(tensor));
        }

        if (other is not null && !ReferenceEquals(other.Backend, backend))
        {
            throw new ArgumentException($"{tensor} and {other} belong to different backends.", nameof(other));
        }

        Order(backend.Stream);
        return backend.Stream;
    }

    /// <summary>Makes <paramref name="stream"/> wait for the last collective queued on another stream.</summary>
    private void Order(IntPtr stream)
    {
        CudaBackend.MakeCurrent(_context);
        if (_lastStream != IntPtr.Zero && _lastStream != stream)
        {
            Driver.Check(Driver.cuEventRecord(_orderEvent, _lastStream), "cuEventRecord");
            Driver.Check(Driver.cuStreamWaitEvent(stream, _orderEvent, 0), "cuStreamWaitEvent");
        }

        _lastStream = stream;
    }

    /// <summary>Device scratch of <paramref name="bytes"/> on the own stream, holding <paramref name="data"/> at <paramref name="offset"/>.</summary>
    private ulong Stage(ReadOnlySpan<byte> data, long bytes, long offset)
    {
        ObjectDisposedException.ThrowIf(_communicator == IntPtr.Zero, this);
        Order(_stream);
        if (bytes > _stagingBytes || _staging == 0)
        {
            if (_staging != 0)
            {
                Driver.Check(Driver.cuMemFreeAsync(_staging, _stream), "cuMemFreeAsync");
            }

            _stagingBytes = Math.Max(Math.Max(bytes, 4096), _stagingBytes * 2);
            ulong pointer;
            Driver.Check(Driver.cuMemAllocAsync(&pointer, (nuint)_stagingBytes, _stream), "cuMemAllocAsync");
            _staging = pointer;
        }

        if (!data.IsEmpty)
        {
            fixed (byte* source = data)
            {
                Driver.Check(Driver.cuMemcpyHtoDAsync_v2(_staging + (ulong)offset, source, (nuint)data.Length, _stream), "cuMemcpyHtoDAsync");
            }
        }

        return _staging;
    }

    /// <summary>Waits for the queued collective, then copies its result back to the host.</summary>
    private void Unstage(ulong device, Span<byte> destination, TimeSpan timeout, string operation)
    {
        Wait(timeout, operation);
        if (destination.IsEmpty)
        {
            return;
        }

        fixed (byte* target = destination)
        {
            Driver.Check(Driver.cuMemcpyDtoHAsync_v2(target, device, (nuint)destination.Length, _stream), "cuMemcpyDtoHAsync");
        }

        Driver.Check(Driver.cuStreamSynchronize(_stream), "cuStreamSynchronize");
    }

    /// <summary>Polls the own stream: a dead or stalled peer must end in an exception, not a hung process.</summary>
    private void Wait(TimeSpan timeout, string operation)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var spins = 0;
        while (true)
        {
            var state = Driver.cuStreamQuery(_stream);
            if (state == 0)
            {
                return;
            }

            if (state != Driver.CUDA_ERROR_NOT_READY)
            {
                Driver.Check(state, $"{operation} (cuStreamQuery)");
            }

            int failure;
            NcclNative.Check(NcclNative.ncclCommGetAsyncError(_communicator, &failure), "ncclCommGetAsyncError");
            if (failure != 0 && failure != InProgress)
            {
                var message = NcclNative.Describe(failure, _communicator);
                Abort();
                throw new CudaException($"{operation} failed on a peer: {message}.");
            }

            if (clock.Elapsed > timeout)
            {
                Abort();
                throw new TimeoutException($"{operation} did not complete within {timeout.TotalSeconds:F1} s: a peer stalled or died; the NCCL communicator was aborted.");
            }

            if (++spins > 1000)
            {
                Thread.Sleep(spins > 20000 ? 1 : 0);
            }
        }
    }

    private static void Run(int result, string call) => NcclNative.Check(result, call);

    private static long ElementCount(int bytes, DType dtype)
    {
        var size = dtype.SizeInBytes();
        return bytes % size == 0 ? bytes / size : throw new ArgumentException($"{bytes} bytes are not a whole number of {dtype} elements.");
    }

    private static void RequireSizes(Tensor part, Tensor whole, int size)
    {
        if (part.DType != whole.DType || part.ElementCount * size != whole.ElementCount)
        {
            throw new ArgumentException($"{whole} must hold {size} blocks of {part}.");
        }
    }

    private static int DataType(DType dtype) => dtype switch
    {
        DType.U8 => 1,
        DType.I32 => 2,
        DType.U32 => 3,
        DType.I64 => 4,
        DType.F16 => 6,
        DType.F32 => 7,
        DType.BF16 => 9,
        _ => throw new ArgumentException($"NCCL has no type for {dtype}."),
    };
}

/// <summary>ncclUniqueId: 128 opaque bytes that name a communicator; sent to every rank through the bootstrap.</summary>
[StructLayout(LayoutKind.Sequential, Size = Length)]
public unsafe struct NcclUniqueId
{
    public const int Length = 128;

    private fixed byte _bytes[Length];

    public static NcclUniqueId FromBytes(ReadOnlySpan<byte> bytes)
    {
        if (bytes.Length != Length)
        {
            throw new ArgumentException($"An NCCL unique id has {Length} bytes, got {bytes.Length}.", nameof(bytes));
        }

        var id = default(NcclUniqueId);
        bytes.CopyTo(new Span<byte>(id._bytes, Length));
        return id;
    }

    public readonly byte[] ToBytes()
    {
        fixed (byte* pointer = _bytes)
        {
            return new ReadOnlySpan<byte>(pointer, Length).ToArray();
        }
    }
}

internal static unsafe class NcclNative
{
    private const string Lib = CudaLibraries.Nccl;

    [DllImport(Lib)] public static extern int ncclGetUniqueId(NcclUniqueId* id);
    [DllImport(Lib)] public static extern int ncclCommInitRank(IntPtr* communicator, int ranks, NcclUniqueId id, int rank);
    [DllImport(Lib)] public static extern int ncclCommInitAll(IntPtr* communicators, int count, int* devices);
    [DllImport(Lib)] public static extern int ncclCommDestroy(IntPtr communicator);
    [DllImport(Lib)] public static extern int ncclCommAbort(IntPtr communicator);
    [DllImport(Lib)] public static extern int ncclGroupStart();
    [DllImport(Lib)] public static extern int ncclGroupEnd();
    [DllImport(Lib)] public static extern int ncclCommSplit(IntPtr communicator, int color, int key, IntPtr* split, void* config);
    [DllImport(Lib)] public static extern int ncclCommUserRank(IntPtr communicator, int* rank);
    [DllImport(Lib)] public static extern int ncclCommCount(IntPtr communicator, int* count);
    [DllImport(Lib)] public static extern int ncclCommGetAsyncError(IntPtr communicator, int* result);
    [DllImport(Lib)] public static extern int ncclAllReduce(ulong send, ulong receive, nuint count, int dataType, int operation, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern int ncclBroadcast(ulong send, ulong receive, nuint count, int dataType, int root, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern int ncclAllGather(ulong send, ulong receive, nuint sendCount, int dataType, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern int ncclReduceScatter(ulong send, ulong receive, nuint receiveCount, int dataType, int operation, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern int ncclSend(ulong send, nuint count, int dataType, int peer, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern int ncclRecv(ulong receive, nuint count, int dataType, int peer, IntPtr communicator, IntPtr stream);
    [DllImport(Lib)] public static extern IntPtr ncclGetErrorString(int result);
    [DllImport(Lib)] public static extern IntPtr ncclGetLastError(IntPtr communicator);

    // NCCL reads its settings with getenv, which does not see Environment.SetEnvironmentVariable on .NET.
    [DllImport("libc", CharSet = CharSet.Ansi)] public static extern int setenv(string name, string value, int overwrite);

    public static void Check(int result, string call)
    {
        if (result != 0)
        {
            throw new CudaException($"{call} failed: {Describe(result, IntPtr.Zero)}.");
        }
    }

    public static string Describe(int result, IntPtr communicator) =>
        $"{Marshal.PtrToStringUTF8(ncclGetErrorString(result))} ({Marshal.PtrToStringUTF8(ncclGetLastError(communicator))})";
}
