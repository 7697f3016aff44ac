namespace Granary.Training;

public static class GradientClipping
{
    /// <summary>The global L2 norm of all gradients (accumulated in f64).</summary>
    public static double GlobalNorm(IEnumerable<Parameter> parameters)
    {
        double sum = 0;
        foreach (var p in parameters)
        {
            foreach (var g in p.Gradient!)
            {
                sum += (double)g * g;
            }
        }

        return Math.Sqrt(sum);
    }

    /// <summary>Scales all gradients by maxNorm / (norm + 1e-6) when the norm exceeds maxNorm, as torch's clip_grad_norm_; returns the norm before.</summary>
    public static double ClipByGlobalNorm(IReadOnlyList<Parameter> parameters, double maxNorm)
    {
        var norm = GlobalNorm(parameters);
        if (norm > maxNorm)
        {
            Scale(parameters, (float)(maxNorm / (norm + 1e-6)));
        }

        return norm;
    }

    public static void Scale(IEnumerable<Parameter> parameters, float factor)
    {
        foreach (var p in parameters)
        {
            System.Numerics.Tensors.TensorPrimitives.Multiply(p.Gradient!, factor, p.Gradient!);
        }
    }
}
