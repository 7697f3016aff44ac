using Granary.Tensors;

namespace Granary.Training;

/// <summary>
/// The matrix products of training, where the device running them is chosen (<see cref="FineTuneOptions.Device"/>):
/// a linear layer's forward x W^T, its input gradient dy W and weight gradients dy^T x, for the base weight and the
/// adapters. They are most of a step's arithmetic. Operands and results are row-major f32 host arrays, so the rest of
/// training (norms, rope, attention, softmax, loss, optimizer) stays on the host whatever the device. A frozen base
/// weight is passed as its <see cref="LinearWeight"/>, so a device can keep its own f32 copy of it.
/// </summary>
internal unsafe interface IMatrixProducts : IDisposable
{
    /// <summary>Where the products run, for messages ("cpu", or the GPU's name).</summary>
    string Device { get; }

    /// <summary>c[m, n] (+)= sum_k a[m, k] * b[n, k]  (a [m, k], b [n, k]).</summary>
    void MultiplyTransposed(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false);

    /// <summary>c[m, n] (+)= sum_k a[m, k] * b[k, n]  (a [m, k], b [k, n]).</summary>
    void Multiply(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false);

    /// <summary>c[m, n] += sum_k a[k, m] * b[k, n]  (a [k, m], b [k, n]): weight gradients dy^T x.</summary>
    void AccumulateTransposedLeft(float* a, float* b, float* c, int m, int n, int k);

    /// <summary>y [rows, out] = x [rows, in] W^T with a frozen weight W [out, in] (the forward of a linear).</summary>
    void MultiplyByFrozenTransposed(float* x, LinearWeight weight, float* y, int rows);

    /// <summary>dx [rows, in] = dy [rows, out] W with a frozen weight W [out, in] (the input gradient of a linear).</summary>
    void MultiplyByFrozen(float* dy, LinearWeight weight, float* dx, int rows);
}

/// <summary>The products on the host's cores (<see cref="MatrixMath"/>); frozen weights are read as f32 on each use.</summary>
internal sealed unsafe class CpuMatrixProducts : IMatrixProducts
{
    public static readonly CpuMatrixProducts Instance = new();

    private CpuMatrixProducts()
    {
    }

    public string Device => "cpu";

    public void MultiplyTransposed(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false) =>
        MatrixMath.MultiplyTransposed(a, b, c, m, n, k, accumulate);

    public void Multiply(float* a, float* b, float* c, int m, int n, int k, bool accumulate = false) =>
        MatrixMath.Multiply(a, b, c, m, n, k, accumulate);

    public void AccumulateTransposedLeft(float* a, float* b, float* c, int m, int n, int k) =>
        MatrixMath.AccumulateTransposedLeft(a, b, c, m, n, k);

    public void MultiplyByFrozenTransposed(float* x, LinearWeight weight, float* y, int rows)
    {
        using var w = FrozenWeights.Open(weight);
        MatrixMath.MultiplyTransposed(x, w.Pointer, y, rows, weight.OutFeatures, weight.InFeatures);
    }

    public void MultiplyByFrozen(float* dy, LinearWeight weight, float* dx, int rows)
    {
        using var w = FrozenWeights.Open(weight);
        MatrixMath.Multiply(dy, w.Pointer, dx, rows, weight.InFeatures, weight.OutFeatures);
    }

    // Shared and stateless: nothing to release.
    public void Dispose()
    {
    }
}
