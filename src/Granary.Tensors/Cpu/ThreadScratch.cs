using System.Runtime.InteropServices;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Per-thread native scratch that grows and is kept for the thread's lifetime, so kernels allocate nothing per call.
/// Slots let one kernel hold several scratch arrays at once.
/// </summary>
internal static unsafe class ThreadScratch
{
    public const int SlotCount = 4;

    [ThreadStatic]
    private static Slots? _slots;

    /// <summary>At least <paramref name="count"/> floats (64-byte aligned) in <paramref name="slot"/>; contents are undefined.</summary>
    public static float* Floats(int slot, long count) => (float*)Bytes(slot, count * sizeof(float));

    public static byte* Bytes(int slot, long byteCount)
    {
        var slots = _slots ??= new Slots();
        if (slots.Capacity[slot] < byteCount)
        {
            NativeMemory.AlignedFree((void*)slots.Pointers[slot]);
            // Grow geometrically so a context that lengthens by one token per call does not reallocate each time.
            var capacity = Math.Max(byteCount, slots.Capacity[slot] * 2);
            slots.Pointers[slot] = (nint)NativeMemory.AlignedAlloc((nuint)capacity, 64);
            slots.Capacity[slot] = capacity;
        }

        return (byte*)slots.Pointers[slot];
    }

    private sealed class Slots
    {
        public readonly nint[] Pointers = new nint[SlotCount];
        public readonly long[] Capacity = new long[SlotCount];

        ~Slots()
        {
            foreach (var pointer in Pointers)
            {
                NativeMemory.AlignedFree((void*)pointer);
            }
        }
    }
}
