using Granary.Tensors;

namespace Granary.Training;

/// <summary>
/// A linear layer y = x W^T + b (+ scale * dropout(x) A^T B^T; DoRA rescales the sum per output column to m /
/// ||W + scale B A||, before the bias) in training. W is either a frozen model weight (read as f32 by the products'
/// device: converted on each use on the host, kept as an f32 copy on a GPU) or a trainable f32 parameter. The matrix
/// products run on <see cref="IMatrixProducts"/>; the rest (bias, dropout, DoRA's norms) on the host.
/// </summary>
public sealed unsafe class TrainableLinear
{
    private readonly LinearWeight? _frozen;
    private readonly IMatrixProducts _products;

    internal TrainableLinear(string name, LinearWeight weight, bool trainBase, IMatrixProducts products)
    {
        Name = name;
        _products = products;
        InFeatures = weight.InFeatures;
        OutFeatures = weight.OutFeatures;
        if (trainBase)
        {
            Weight = new Parameter(name + ".weight", FrozenWeights.ToArray(weight), [OutFeatures, InFeatures], trainable: true);
        }
        else
        {
            _frozen = weight;
        }

        if (FrozenWeights.BiasToArray(weight) is { } bias)
        {
            Bias = new Parameter(name + ".bias", bias, [OutFeatures], trainBase);
        }
    }

    /// <summary>A layer over an existing trainable weight [out, in] (the output head tied to the embedding).</summary>
    internal TrainableLinear(string name, Parameter weight, IMatrixProducts products)
    {
        Name = name;
        _products = products;
        OutFeatures = weight.Shape[0];
        InFeatures = weight.Shape[1];
        Weight = weight;
    }

    /// <summary>Module path, e.g. "model.layers.0.self_attn.q_proj".</summary>
    public string Name { get; }

    public int InFeatures { get; }

    public int OutFeatures { get; }

    /// <summary>The base weight when it is trained (full fine-tuning); null while it is frozen.</summary>
    public Parameter? Weight { get; }

    public Parameter? Bias { get; }

    public LoraAdapter? Lora { get; private set; }

    internal void AttachLora(LoraAdapter adapter) => Lora = adapter;

    public IEnumerable<Parameter> Parameters()
    {
        if (Weight is not null)
        {
            yield return Weight;
        }

        if (Bias is not null)
        {
            yield return Bias;
        }

        if (Lora is not null)
        {
            yield return Lora.A;
            yield return Lora.B;
            if (Lora.Magnitude is not null)
            {
                yield return Lora.Magnitude;
            }
        }
    }

    internal float[] Forward(float[] input, int rows, TrainingContext context, out LinearTape tape)
    {
        var output = new float[rows * OutFeatures];
        fixed (float* x = input, y = output)
        {
            MultiplyByWeightTransposed(x, y, rows);
        }

        float[]? dropped = null;
        float[]? projected = null;
        bool[]? kept = null;
        float[]? undecomposed = null;
        float[]? inverseNorms = null;
        if (Lora is { } lora)
        {
            dropped = lora.Dropout > 0 && context.IsTraining ? context.Dropout(input, lora.Dropout, Name, out kept) : input;
            projected = new float[rows * lora.Rank];
            var bScaled = new float[rows * lora.Rank];
            fixed (float* xd = dropped, xa = projected, xs = bScaled, a = lora.A.Value, b = lora.B.Value, y = output)
            {
                _products.MultiplyTransposed(xd, a, xa, rows, lora.Rank, InFeatures);
                System.Numerics.Tensors.TensorPrimitives.Multiply(projected, lora.Scale, bScaled);
                _products.MultiplyTransposed(xs, b, y, rows, OutFeatures, lora.Rank, accumulate: true);
            }

            if (lora.Magnitude is { } magnitude)
            {
                // DoRA: every output column o is multiplied by m[o] / ||W + scale B A||_o (the bias comes after).
                undecomposed = (float[])output.Clone();
                inverseNorms = AdaptedRowNorms();
                System.Numerics.Tensors.TensorPrimitives.Reciprocal(inverseNorms, inverseNorms);
                var factor = new float[OutFeatures];
                System.Numerics.Tensors.TensorPrimitives.Multiply(magnitude.Value, inverseNorms, factor);
                for (var r = 0; r < rows; r++)
                {
                    var row = output.AsSpan(r * OutFeatures, OutFeatures);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(row, factor, row);
                }
            }
        }

        if (Bias is not null)
        {
            for (var r = 0; r < rows; r++)
            {
                System.Numerics.Tensors.TensorPrimitives.Add(output.AsSpan(r * OutFeatures, OutFeatures), Bias.Value, output.AsSpan(r * OutFeatures, OutFeatures));
            }
        }

        tape = new LinearTape(input, rows, dropped, projected, kept, undecomposed, inverseNorms);
        return output;
    }

    /// <summary>||W + scale B A|| of every output row, in f32 (DoRA's denominator; B A is formed one row at a time).</summary>
    internal float[] AdaptedRowNorms()
    {
        var lora = Lora ?? throw new InvalidOperationException($"{Name} has no adapter.");
        var norms = new float[OutFeatures];
        using var w = OpenWeight();
        var weight = w.Pointer;
        var (inFeatures, rank, scale) = (InFeatures, lora.Rank, lora.Scale);
        var a = lora.A.Value;
        var b = lora.B.Value;
        MatrixMath.For(OutFeatures, (long)inFeatures * (rank + 1), (start, end) =>
        {
            var row = new float[inFeatures];
            for (var o = start; o < end; o++)
            {
                new ReadOnlySpan<float>(weight + ((long)o * inFeatures), inFeatures).CopyTo(row);
                for (var k = 0; k < rank; k++)
                {
                    System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(a.AsSpan(k * inFeatures, inFeatures), scale * b[(o * rank) + k], row, row);
                }

                norms[o] = System.Numerics.Tensors.TensorPrimitives.Norm(row);
            }
        });
        return norms;
    }

    /// <summary>Accumulates parameter gradients; returns dL/dx when <paramref name="needInputGradient"/>.</summary>
    internal float[]? Backward(in LinearTape tape, float[] outputGradient, bool needInputGradient)
    {
        var rows = tape.Rows;
        float[]? inputGradient = needInputGradient ? new float[rows * InFeatures] : null;
        if (Bias?.Gradient is { } biasGradient)
        {
            for (var r = 0; r < rows; r++)
            {
                System.Numerics.Tensors.TensorPrimitives.Add(biasGradient, outputGradient.AsSpan(r * OutFeatures, OutFeatures), biasGradient);
            }
        }

        if (Lora?.Magnitude is { } magnitude)
        {
            // y = (m / n) * u with n constant: dm += sum_rows dy * u / n, du = dy * m / n.
            var inverseNorms = tape.InverseNorms!;
            var factor = new float[OutFeatures];
            System.Numerics.Tensors.TensorPrimitives.Multiply(magnitude.Value, inverseNorms, factor);
            var magnitudeGradient = magnitude.Gradient!;
            var undecomposedGradient = new float[outputGradient.Length];
            for (var r = 0; r < rows; r++)
            {
                var gradient = outputGradient.AsSpan(r * OutFeatures, OutFeatures);
                var undecomposed = tape.Undecomposed.AsSpan(r * OutFeatures, OutFeatures);
                for (var o = 0; o < OutFeatures; o++)
                {
                    magnitudeGradient[o] += gradient[o] * undecomposed[o] * inverseNorms[o];
                }

                System.Numerics.Tensors.TensorPrimitives.Multiply(gradient, factor, undecomposedGradient.AsSpan(r * OutFeatures, OutFeatures));
            }

            outputGradient = undecomposedGradient;
        }

        fixed (float* dy = outputGradient, x = tape.Input)
        {
            if (Weight is not null)
            {
                fixed (float* dw = Weight.Gradient)
                {
                    _products.AccumulateTransposedLeft(dy, x, dw, OutFeatures, InFeatures, rows);
                }
            }

            if (inputGradient is not null)
            {
                fixed (float* dx = inputGradient)
                {
                    MultiplyByWeight(dy, dx, rows);
                }
            }

            if (Lora is { } lora)
            {
                // d(xa) = scale * dy B; dB += scale * dy^T xa; dA += d(xa)^T dropout(x); dx += dropout'(d(xa) A).
                var rank = lora.Rank;
                var projectedGradient = new float[rows * rank];
                var projectedScaled = new float[rows * rank];
                System.Numerics.Tensors.TensorPrimitives.Multiply(tape.Projected!, lora.Scale, projectedScaled);
                fixed (float* b = lora.B.Value, db = lora.B.Gradient, a = lora.A.Value, da = lora.A.Gradient,
                       xa = projectedScaled, dxa = projectedGradient, xd = tape.Dropped)
                {
                    _products.Multiply(dy, b, dxa, rows, rank, OutFeatures);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(projectedGradient, lora.Scale, projectedGradient);
                    _products.AccumulateTransposedLeft(dy, xa, db, OutFeatures, rank, rows);
                    _products.AccumulateTransposedLeft(dxa, xd, da, rank, InFeatures, rows);
                    if (inputGradient is not null)
                    {
                        if (tape.Kept is null)
                        {
                            fixed (float* dx = inputGradient)
                            {
                                _products.Multiply(dxa, a, dx, rows, InFeatures, rank, accumulate: true);
                            }
                        }
                        else
                        {
                            var loraInputGradient = new float[rows * InFeatures];
                            fixed (float* dl = loraInputGradient)
                            {
                                _products.Multiply(dxa, a, dl, rows, InFeatures, rank);
                            }

                            // Dropout passed x_i / (1 - p) where kept, 0 elsewhere; its gradient is that factor.
                            var keepScale = 1 / (1 - lora.Dropout);
                            for (var i = 0; i < inputGradient.Length; i++)
                            {
                                if (tape.Kept[i])
                                {
                                    inputGradient[i] += loraInputGradient[i] * keepScale;
                                }
                            }
                        }
                    }
                }
            }
        }

        return inputGradient;
    }

    // y = x W^T: a frozen W through the products' own f32 copy of it (resident on a GPU), a trained one from its values.
    private void MultiplyByWeightTransposed(float* x, float* y, int rows)
    {
        if (_frozen is not null)
        {
            _products.MultiplyByFrozenTransposed(x, _frozen, y, rows);
            return;
        }

        fixed (float* w = Weight!.Value)
        {
            _products.MultiplyTransposed(x, w, y, rows, OutFeatures, InFeatures);
        }
    }

    // dx = dy W, W as in MultiplyByWeightTransposed.
    private void MultiplyByWeight(float* dy, float* dx, int rows)
    {
        if (_frozen is not null)
        {
            _products.MultiplyByFrozen(dy, _frozen, dx, rows);
            return;
        }

        fixed (float* w = Weight!.Value)
        {
            _products.Multiply(dy, w, dx, rows, InFeatures, OutFeatures);
        }
    }

    /// <summary>The weight the forward uses, as f32 (W, without the adapter), on the host.</summary>
    internal FrozenWeights.View OpenWeight()
    {
        if (Weight is not null)
        {
            var pin = System.Runtime.InteropServices.GCHandle.Alloc(Weight.Value, System.Runtime.InteropServices.GCHandleType.Pinned);
            return FrozenWeights.View.Pinned(pin);
        }

        return FrozenWeights.Open(_frozen!);
    }
}

/// <summary>
/// What a linear layer's backward needs from its forward; DoRA adds the output before its rescaling and
/// 1 / ||W + scale B A|| per output column.
/// </summary>
internal readonly record struct LinearTape(float[] Input, int Rows, float[]? Dropped, float[]? Projected, bool[]? Kept, float[]? Undecomposed, float[]? InverseNorms);

/// <summary>
/// The adapter of one linear: A [rank, in], B [out, rank] (peft's layout; mlx_lm stores the transposes), and for DoRA
/// the magnitude m [out] (mlx_lm's "m", peft's lora_magnitude_vector).
/// </summary>
public sealed class LoraAdapter
{
    internal LoraAdapter(string module, int inFeatures, int outFeatures, int rank, float scale, float dropout, bool decomposed = false)
    {
        Rank = rank;
        Scale = scale;
        Dropout = dropout;
        A = new Parameter(module + ".lora_a", new float[rank * inFeatures], [rank, inFeatures], trainable: true);
        B = new Parameter(module + ".lora_b", new float[outFeatures * rank], [outFeatures, rank], trainable: true);
        Magnitude = decomposed ? new Parameter(module + ".m", new float[outFeatures], [outFeatures], trainable: true) : null;
    }

    /// <summary>DoRA's trained row magnitudes; null for plain LoRA.</summary>
    public Parameter? Magnitude { get; }

    public int Rank { get; }

    public float Scale { get; }

    public float Dropout { get; }

    public Parameter A { get; }

    public Parameter B { get; }
}
