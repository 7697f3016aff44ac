using Granary.Tensors;
using Granary.Tensors.Cuda;

namespace Granary.Training;

/// <summary>
/// Training's matrix products on one CUDA GPU: cuBLASLt SGEMM with plain f32 arithmetic (no TF32), so a step matches
/// the host's to f32 rounding. This is a first GPU path, not a device-resident trainer: each frozen base weight is
/// converted to f32 (from bf16, f16 or MLX-quantized) and uploaded once, on its first use, and stays on the GPU;
/// activations, gradients and the small trained matrices (adapters, or the weights of full fine-tuning) are copied
/// in and the result copied back on every product, and everything between the products runs on the host.
/// Not thread-safe (one forward/backward pass at a time), like the backend underneath.
/// </summary>
internal sealed unsafe class CudaMatrixProducts : IMatrixProducts
{
    private readonly CudaBackend _gpu;
    private readonly bool _ownsGpu;
    private readonly Dictionary<LinearWeight, Tensor> _resident = new(ReferenceEqualityComparer.Instance);

    /// <param name="gpu">The GPU's backend; disposed with this object when <paramref name="ownsGpu"/>.</param>
    public CudaMatrixProducts(CudaBackend gpu, bool ownsGpu)
    {
        ArgumentNullException.ThrowIfNull(gpu);
        _gpu = gpu;
        _ownsGpu = ownsGpu;
    }

    public string Device => $"cuda:{_gpu.Device} {_gpu.DeviceName}";

    /// <summary>Opens GPU <paramref name="device"/> (null: this process's, <see cref="CudaBackend.DeviceForThisProcess"/>).</summary>
    /// <exception cref="CudaException">No driver or GPU, or a CUDA library is missing; the message says which.</exception>
    public static CudaMatrixProducts Open(int? device)
    {
        try
        {
            return new CudaMatrixProducts(new CudaBackend(device), ownsGpu: true);
        }
        catch (CudaException e)
        {
            throw new CudaException($"Training on the CUDA device needs an NVIDIA GPU with its driver and the CUDA 13 libraries: {e.Message}");
        }
    }

    public void MultiplyTransposed(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false)
    {
        using var left = Upload(a, m, k);
        using var right = Upload(b, n, k);
        Run(left, transposeA: false, right, transposeB: true, c, m, n, accumulate);
    }

    public void Multiply(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false)
    {
        using var left = Upload(a, m, k);
        using var right = Upload(b, k, n);
        Run(left, transposeA: false, right, transposeB: false, c, m, n, accumulate);
    }

    public void AccumulateTransposedLeft(float* a, float* b, float* c, int m, int n, int k)
    {
        using var left = Upload(a, k, m);
        using var right = Upload(b, k, n);
        Run(left, transposeA: true, right, transposeB: false, c, m, n, accumulate: true);
    }

    public void MultiplyByFrozenTransposed(float* x, LinearWeight weight, float* y, int rows)
    {
        using var input = Upload(x, rows, weight.InFeatures);
        Run(input, transposeA: false, Resident(weight), transposeB: true, y, rows, weight.OutFeatures, accumulate: false);
    }

    public void MultiplyByFrozen(float* dy, LinearWeight weight, float* dx, int rows)
    {
        using var gradient = Upload(dy, rows, weight.OutFeatures);
        Run(gradient, transposeA: false, Resident(weight), transposeB: false, dx, rows, weight.InFeatures, accumulate: false);
    }

    public void Dispose()
    {
        foreach (var tensor in _resident.Values)
        {
            tensor.Dispose();
        }

        _resident.Clear();
        if (_ownsGpu)
        {
            _gpu.Dispose();
        }
    }

    // c (host, [m, n]) (+)= op(a) op(b) on the GPU; an accumulated product starts from c's current values.
    private void Run(Tensor a, bool transposeA, Tensor b, bool transposeB, float* c, int m, int n, bool accumulate)
    {
        var bytes = checked((long)m * n * sizeof(float));
        var host = new Span<byte>(c, checked((int)bytes));
        using var output = accumulate ? _gpu.Upload(host, DType.F32, m, n) : _gpu.Allocate(DType.F32, m, n);
        _gpu.MatrixMultiply(a, transposeA, b, transposeB, output, accumulate);
        _gpu.Download(output, host);
    }

    private Tensor Upload(float* values, int rows, int columns) =>
        _gpu.Upload(new ReadOnlySpan<byte>(values, checked(rows * columns * sizeof(float))), DType.F32, rows, columns);

    // The frozen weight as f32 on the GPU, converted and uploaded on its first use.
    private Tensor Resident(LinearWeight weight)
    {
        if (!_resident.TryGetValue(weight, out var tensor))
        {
            using var view = FrozenWeights.Open(weight);
            tensor = Upload(view.Pointer, weight.OutFeatures, weight.InFeatures);
            _resident[weight] = tensor;
        }

        return tensor;
    }
}
