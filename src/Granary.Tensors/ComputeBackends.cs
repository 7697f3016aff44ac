using Granary.Tensors.Cpu;
using Granary.Tensors.Cuda;

namespace Granary.Tensors;

/// <summary>The one place that maps a backend name to an implementation.</summary>
public static class ComputeBackends
{
    /// <summary>Creates the backend called <paramref name="name"/> ("cpu", the default; "cuda": the first NVIDIA GPU; "metal" is not built into this release).</summary>
    /// <param name="threads">CPU worker threads; defaults to all processors.</param>
    public static IComputeBackend Create(string name = "cpu", int? threads = null) => name.ToLowerInvariant() switch
    {
        "cpu" => new CpuBackend(threads),
        "cuda" => new CudaBackend(),
        "metal" => throw new NotSupportedException("The Metal backend is not built into this release of Granary: it needs Apple hardware; use \"cpu\"."),
        _ => throw new ArgumentException($"Unknown compute backend \"{name}\"; expected \"cpu\", \"cuda\" or \"metal\".", nameof(name)),
    };
}
