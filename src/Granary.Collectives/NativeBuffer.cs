using System.Runtime.InteropServices;

namespace Granary.Collectives;

/// <summary>Growable, 64-byte aligned unmanaged scratch memory, reused across operations.</summary>
internal sealed unsafe class NativeBuffer : IDisposable
{
    private long _capacity;

    public byte* Pointer { get; private set; }

    public byte* Ensure(long bytes)
    {
        if (bytes > _capacity)
        {
            NativeMemory.AlignedFree(Pointer);
            Pointer = null;
            _capacity = 0;
            Pointer = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 4096), 64);
            _capacity = Math.Max(bytes, 4096);
        }

        return Pointer;
    }

    public void Dispose()
    {
        NativeMemory.AlignedFree(Pointer);
        Pointer = null;
        _capacity = 0;
    }
}
