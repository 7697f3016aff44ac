namespace Granary.Training;

public enum FineTuneType
{
    /// <summary>Frozen base weights (f32, bf16 or MLX-quantized: QLoRA) with trained low-rank adapters.</summary>
    Lora,

    /// <summary>Every weight trained, as an f32 copy; for small models.</summary>
    Full,

    /// <summary>
    /// DoRA (weight-decomposed LoRA, mlx_lm's "dora", peft's use_dora): the adapted weight W + scale B A is rescaled per
    /// output row to a trained magnitude m, y = m / ||W + scale B A||_row * (x W^T + scale x A^T B^T) + b, with the norm
    /// treated as a constant in the backward pass (as both do).
    /// </summary>
    Dora,
}

/// <summary>Where the matrix products of training run (see <see cref="FineTuneOptions.Device"/>).</summary>
public enum TrainingDevice
{
    /// <summary>The host's cores, like everything else in training.</summary>
    Cpu,

    /// <summary>
    /// One NVIDIA GPU: the products (x W^T, dy W, dy^T x; most of a step's arithmetic) run as plain-f32 cuBLASLt
    /// GEMMs with the frozen base weights kept on the GPU as f32. Everything else stays on the host: a first GPU path,
    /// not a device-resident trainer.
    /// </summary>
    Cuda,
}

/// <summary>What a <see cref="TrainingModel"/> trains, how it keeps activations and where its products run.</summary>
public sealed class FineTuneOptions
{
    public FineTuneType Type { get; set; } = FineTuneType.Lora;

    public LoraOptions Lora { get; set; } = new();

    /// <summary>Keep only each layer's input in the forward pass and recompute the layer in the backward pass.</summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>
    /// Seed of the adapters' initial values (A uniform in +-1/sqrt(in), B zero, as mlx_lm; DoRA's magnitude starts at
    /// the row norms of W).
    /// </summary>
    public int Seed { get; set; }

    /// <summary>Cores a forward/backward pass uses (0: all); ranks that share a host divide them.</summary>
    public int Threads { get; set; }

    /// <summary>Where the matrix products run; the host by default.</summary>
    public TrainingDevice Device { get; set; } = TrainingDevice.Cpu;

    /// <summary>
    /// For <see cref="TrainingDevice.Cuda"/>: the GPU ordinal; null takes this process's GPU (under `granary launch`
    /// each rank its own, see <c>CudaBackend.DeviceForThisProcess</c>).
    /// </summary>
    public int? CudaDevice { get; set; }

    public void Validate()
    {
        if (Threads < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(Threads), Threads, "Threads must be 0 (all cores) or positive.");
        }

        if (!Enum.IsDefined(Device))
        {
            throw new ArgumentOutOfRangeException(nameof(Device), Device, "Unknown training device; use Cpu or Cuda.");
        }

        if (CudaDevice is < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(CudaDevice), CudaDevice, "The CUDA device is a GPU ordinal: 0 or more.");
        }

        if (CudaDevice is not null && Device != TrainingDevice.Cuda)
        {
            throw new ArgumentException($"{nameof(CudaDevice)} is set but the products run on {Device}; set {nameof(Device)} to Cuda.", nameof(CudaDevice));
        }

        if (Type is FineTuneType.Lora or FineTuneType.Dora)
        {
            Lora.Validate();
        }
    }
}
