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
/// One rank of an NCCL communicator over tensors of a <see cref="CudaBackend"/>: one process (or backend) per GPU,
/// collectives queued on the backend's stream in order with its kernels, so a tensor-parallel step needs no host
/// synchronisation. Rank 0 makes the <see cref="NcclUniqueId"/> and the bootstrap (Granary's TCP group) hands it to the
/// other ranks before each calls the constructor. NVLink SHARP (NVLS) is disabled: see <see cref="DisableNvls"/>.
/// </summary>
public sealed unsafe class NcclCommunicator : IDisposable
{
    private readonly CudaBackend _backend;
    private IntPtr _communicator;

    /// <summary>Joins the communicator <paramref name="id"/> as <paramref name="rank"/> of <paramref name="size"/>; blocks until all ranks joined.</summary>
    public NcclCommunicator(CudaBackend backend, NcclUniqueId id, int rank, int size)
    {
        ArgumentNullException.ThrowIfNull(backend);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(size);
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, size);
        DisableNvls();
        _backend = backend;
        backend.MakeCurrent();
        IntPtr communicator;
        NcclNative.Check(NcclNative.ncclCommInitRank(&communicator, size, id, rank), "ncclCommInitRank");
        _communicator = communicator;
        Rank = rank;
        Size = size;
    }

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

    /// <summary>In place: every rank ends with the reduction over all ranks' <paramref name="buffer"/>.</summary>
    public void AllReduce(Tensor buffer, NcclReduction reduction = NcclReduction.Sum)
    {
        var pointer = CudaBackend.PointerOf(buffer);
        Run(NcclNative.ncclAllReduce(pointer, pointer, (nuint)buffer.ElementCount, DataType(buffer), (int)reduction, Handle, _backend.Stream), "ncclAllReduce");
    }

    /// <summary>Every rank ends with <paramref name="root"/>'s <paramref name="buffer"/>.</summary>
    public void Broadcast(Tensor buffer, int root)
    {
        var pointer = CudaBackend.PointerOf(buffer);
        Run(NcclNative.ncclBroadcast(pointer, pointer, (nuint)buffer.ElementCount, DataType(buffer), root, Handle, _backend.Stream), "ncclBroadcast");
    }

    /// <summary><paramref name="output"/> (Size × input elements) = the inputs of ranks 0..Size-1, concatenated.</summary>
    public void AllGather(Tensor input, Tensor output)
    {
        RequireSizes(input, output, Size);
        Run(
            NcclNative.ncclAllGather(CudaBackend.PointerOf(input), CudaBackend.PointerOf(output), (nuint)input.ElementCount, DataType(input), Handle, _backend.Stream),
            "ncclAllGather");
    }

    /// <summary><paramref name="input"/> is Size blocks of output's size; rank r gets the reduction of every rank's block r.</summary>
    public void ReduceScatter(Tensor input, Tensor output, NcclReduction reduction = NcclReduction.Sum)
    {
        RequireSizes(output, input, Size);
        Run(
            NcclNative.ncclReduceScatter(
                CudaBackend.PointerOf(input), CudaBackend.PointerOf(output), (nuint)output.ElementCount, DataType(input), (int)reduction, Handle, _backend.Stream),
            "ncclReduceScatter");
    }

    public void Send(Tensor data, int peer) =>
        Run(NcclNative.ncclSend(CudaBackend.PointerOf(data), (nuint)data.ElementCount, DataType(data), peer, Handle, _backend.Stream), "ncclSend");

    public void Recv(Tensor data, int peer) =>
        Run(NcclNative.ncclRecv(CudaBackend.PointerOf(data), (nuint)data.ElementCount, DataType(data), peer, Handle, _backend.Stream), "ncclRecv");

    public void Dispose()
    {
        if (_communicator != IntPtr.Zero)
        {
            _backend.Synchronize();
            _ = NcclNative.ncclCommDestroy(_communicator);
            _communicator = IntPtr.Zero;
        }
    }

    private IntPtr Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(_communicator == IntPtr.Zero, this);
            _backend.MakeCurrent();
            return _communicator;
        }
    }

    private static void Run(int result, string call) => NcclNative.Check(result, call);

    private static void RequireSizes(Tensor part, Tensor whole, int size)
    {
        if (part.DType != whole.DType || part.ElementCount * size != whole.ElementCount)
        {
            throw new ArgumentException($"{whole} must hold {size} blocks of {part}.");
        }
    }

    private static int DataType(Tensor tensor) => tensor.DType switch
    {
        DType.U8 => 1,
        DType.I32 => 2,
        DType.U32 => 3,
        DType.I64 => 4,
        DType.F16 => 6,
        DType.F32 => 7,
        DType.BF16 => 9,
        _ => throw new ArgumentException($"NCCL has no type for {tensor.DType}."),
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
    [DllImport(Lib)] public static extern int ncclCommDestroy(IntPtr communicator);
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
            throw new CudaException($"{call} failed: {Marshal.PtrToStringUTF8(ncclGetErrorString(result))} ({Marshal.PtrToStringUTF8(ncclGetLastError(IntPtr.Zero))}).");
        }
    }
}
