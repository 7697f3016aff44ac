namespace Granary.Tensors.Cuda;

/// <summary>Device memory from the stream-ordered pool; freed in stream order, so a free never stalls the host.</summary>
internal sealed class CudaBuffer : DeviceBuffer
{
    private readonly CudaBackend _backend;

    public CudaBuffer(CudaBackend backend, ulong pointer, long byteLength)
        : base(backend, byteLength)
    {
        _backend = backend;
        Pointer = pointer;
    }

    public ulong Pointer { get; }

    protected override void Release() => _backend.Free(Pointer);
}
