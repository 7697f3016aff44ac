using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>
/// Several dense projections of one input (q, k, v; gate, up) copied into one [sum of outputs, in] weight so a fused
/// decode step reads them in one pass. The separate weights are freed and replaced by row views of the stacked one,
/// so the weights are held once and every other path (prefill, batches, training) runs on the views unchanged.
/// </summary>
internal sealed record StackedWeights(DenseWeight Weight, DenseWeight[] Views) : IDisposable
{
    /// <summary>
    /// The parts stacked on <paramref name="backend"/> (and then disposed), or null, leaving them as they are, where they
    /// cannot be: not all dense, different dtypes or input widths, biases on some only or of different dtypes.
    /// </summary>
    public static StackedWeights? Stack(IComputeBackend backend, LinearWeight[] parts)
    {
        if (parts.Any(p => p is not DenseWeight) || parts.Length == 0)
        {
            return null;
        }

        var dense = parts.Cast<DenseWeight>().ToArray();
        var (first, firstBias) = (dense[0].Weight, dense[0].Bias);
        if (dense.Any(p => p.Weight.DType != first.DType || p.InFeatures != dense[0].InFeatures || (p.Bias is null) != (firstBias is null)
                || (p.Bias is { } b && b.DType != firstBias!.DType)))
        {
            return null;
        }

        var rows = dense.Sum(p => p.OutFeatures);
        var weight = backend.Allocate(first.DType, rows, dense[0].InFeatures);
        var bias = firstBias is null ? null : backend.Allocate(firstBias.DType, rows);
        var views = new DenseWeight[dense.Length];
        var offset = 0;
        for (var i = 0; i < dense.Length; i++)
        {
            var count = dense[i].OutFeatures;
            backend.Copy(dense[i].Weight, weight.Slice(offset, count));
            if (bias is not null)
            {
                backend.Copy(dense[i].Bias!, bias.Slice(offset, count));
            }

            views[i] = new DenseWeight(weight.Slice(offset, count), bias?.Slice(offset, count));
            offset += count;
        }

        // Queued after the copies, so the backend frees the separate weights only once they are read.
        foreach (var part in dense)
        {
            part.Dispose();
        }

        return new StackedWeights(new DenseWeight(weight, bias), views);
    }

    /// <summary>Frees the stacked weight (the views own nothing).</summary>
    public void Dispose() => Weight.Dispose();
}
