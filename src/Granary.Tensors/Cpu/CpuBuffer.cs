using System.Runtime.InteropServices;

namespace Granary.Tensors.Cpu;

/// <summary>Host memory for the CPU backend: either owned (64-byte aligned, zeroed) or borrowed from a <see cref="HostRegion"/>.</summary>
internal sealed unsafe class CpuBuffer : DeviceBuffer
{
    private const int Alignment = 64;

    private readonly bool _ownsMemory;

    // Keeps a mapped region's owner (for example a memory-mapped file) alive as long as this buffer.
    private readonly object? _regionOwner;

    private CpuBuffer(IComputeBackend backend, byte* pointer, long byteLength, bool ownsMemory, object? regionOwner)
        : base(backend, byteLength)
    {
        Pointer = pointer;
        _ownsMemory = ownsMemory;
        _regionOwner = regionOwner;
    }

    ~CpuBuffer()
    {
        Release();
    }

    public byte* Pointer { get; private set; }

    public object? RegionOwner => _regionOwner;

    public static CpuBuffer Allocate(IComputeBackend backend, long byteLength)
    {
        // Never hand out a null pointer, even for empty tensors, so kernels need no special case.
        var pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(byteLength, 1), Alignment);
        NativeMemory.Clear(pointer, (nuint)byteLength);
        return new CpuBuffer(backend, pointer, byteLength, ownsMemory: true, regionOwner: null);
    }

    public static CpuBuffer Wrap(IComputeBackend backend, HostRegion region)
    {
        var buffer = new CpuBuffer(backend, region.Pointer, region.Length, ownsMemory: false, regionOwner: region.Owner);
        GC.SuppressFinalize(buffer);
        return buffer;
    }

    protected override void Release()
    {
        if (_ownsMemory && Pointer != null)
        {
            NativeMemory.AlignedFree(Pointer);
        }

        Pointer = null;
    }
}
