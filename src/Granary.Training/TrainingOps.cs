using System.Numerics.Tensors;

namespace Granary.Training;

/// <summary>Forward and exact backward of the parameter-free (or vector-weighted) pieces of a decoder, in f32.</summary>
internal static class TrainingOps
{
    /// <summary>y = w * x / sqrt(mean(x^2) + eps) per row of width <paramref name="width"/>; returns 1/rms per row.</summary>
    public static float[] RmsNorm(float[] x, float[] weight, int width, float epsilon, float[] y)
    {
        var rows = x.Length / width;
        var inverse = new float[rows];
        MatrixMath.For(rows, width, (start, end) =>
        {
            for (var r = start; r < end; r++)
            {
                var row = x.AsSpan(r * width, width);
                var rstd = 1 / MathF.Sqrt((TensorPrimitives.SumOfSquares(row) / width) + epsilon);
                inverse[r] = rstd;
                var output = y.AsSpan(r * width, width);
                TensorPrimitives.Multiply(row, rstd, output);
                TensorPrimitives.Multiply(output, weight, output);
            }
        });
        return inverse;
    }

    /// <summary>
    /// dx = rstd * (w*dy) - x * rstd^3 / n * sum(w*dy*x); dw += sum_rows dy * x * rstd (when weightGradient is given).
    /// </summary>
    public static float[] RmsNormBackward(float[] x, float[] weight, float[] inverse, float[] dy, int width, float[]? weightGradient)
    {
        var rows = x.Length / width;
        var dx = new float[x.Length];
        MatrixMath.For(rows, width, (start, end) =>
        {
            Span<float> weighted = width <= 4096 ? stackalloc float[width] : new float[width];
            for (var r = start; r < end; r++)
            {
                var row = x.AsSpan(r * width, width);
                var gradient = dy.AsSpan(r * width, width);
                TensorPrimitives.Multiply(gradient, weight, weighted);
                var rstd = inverse[r];
                var projection = TensorPrimitives.Dot(weighted, row) * rstd * rstd / width;
                var output = dx.AsSpan(r * width, width);
                TensorPrimitives.MultiplyAdd(row, -projection, weighted, output);
                TensorPrimitives.Multiply(output, rstd, output);
            }
        });

        if (weightGradient is not null)
        {
            for (var r = 0; r < rows; r++)
            {
                var rstd = inverse[r];
                var row = x.AsSpan(r * width, width);
                var gradient = dy.AsSpan(r * width, width);
                for (var i = 0; i < width; i++)
                {
                    weightGradient[i] += gradient[i] * row[i] * rstd;
                }
            }
        }

        return dx;
    }

    /// <summary>
    /// The rotary angles cos/sin [length, headDim/2] of positions 0..length-1, in f32 as transformers computes them.
    /// </summary>
    public static (float[] Cos, float[] Sin) RopeTables(float[] inverseFrequencies, int length, float attentionScaling)
    {
        var half = inverseFrequencies.Length;
        var cos = new float[length * half];
        var sin = new float[length * half];
        for (var t = 0; t < length; t++)
        {
            for (var i = 0; i < half; i++)
            {
                var angle = (float)t * inverseFrequencies[i];
                cos[(t * half) + i] = MathF.Cos(angle) * attentionScaling;
                sin[(t * half) + i] = MathF.Sin(angle) * attentionScaling;
            }
        }

        return (cos, sin);
    }

    /// <summary>
    /// Rotates x [batch*length, heads*headDim] in place (rotate-half convention); <paramref name="inverse"/> applies
    /// the transposed rotation, which is the backward pass.
    /// </summary>
    public static void Rope(float[] x, int length, int heads, int headDim, float[] cos, float[] sin, bool inverse)
    {
        var half = headDim / 2;
        var rows = x.Length / (heads * headDim);
        var direction = inverse ? -1f : 1f;
        for (var r = 0; r < rows; r++)
        {
            var t = r % length;
            for (var h = 0; h < heads; h++)
            {
                var head = x.AsSpan(((r * heads) + h) * headDim, headDim);
                for (var i = 0; i < half; i++)
                {
                    var c = cos[(t * half) + i];
                    var s = sin[(t * half) + i] * direction;
                    var a = head[i];
                    var b = head[i + half];
                    head[i] = (a * c) - (b * s);
                    head[i + half] = (b * c) + (a * s);
                }
            }
        }
    }

    /// <summary>
    /// Causal grouped-query attention per sequence: out = softmax(scale q k^T) v. q [B*T, H*D], k/v [B*T, KV*D].
    /// Returns the probabilities [B, H, T, T] (upper triangle zero) that the backward pass needs.
    /// </summary>
    public static float[] Attention(float[] q, float[] k, float[] v, int batch, int length, int heads, int keyValueHeads, int headDim, float scale, float[] output)
    {
        var probabilities = new float[batch * heads * length * length];
        var group = heads / keyValueHeads;
        MatrixMath.For(batch * heads, (long)length * length * headDim, (start, end) =>
        {
            for (var bh = start; bh < end; bh++)
            {
                var (b, h) = (bh / heads, bh % heads);
                var kvh = h / group;
                for (var i = 0; i < length; i++)
                {
                    var query = q.AsSpan((((b * length) + i) * heads * headDim) + (h * headDim), headDim);
                    var p = probabilities.AsSpan(((bh * length) + i) * length, i + 1);
                    for (var j = 0; j <= i; j++)
                    {
                        p[j] = scale * TensorPrimitives.Dot(query, k.AsSpan((((b * length) + j) * keyValueHeads * headDim) + (kvh * headDim), headDim));
                    }

                    TensorPrimitives.SoftMax(p, p);
                    var o = output.AsSpan((((b * length) + i) * heads * headDim) + (h * headDim), headDim);
                    o.Clear();
                    for (var j = 0; j <= i; j++)
                    {
                        TensorPrimitives.MultiplyAdd(v.AsSpan((((b * length) + j) * keyValueHeads * headDim) + (kvh * headDim), headDim), p[j], o, o);
                    }
                }
            }
        });
        return probabilities;
    }

    /// <summary>dq, dk, dv of <see cref="Attention"/>. Parallel over (sequence, kv head) so shared k/v rows have one writer.</summary>
    public static (float[] Dq, float[] Dk, float[] Dv) AttentionBackward(
        float[] q, float[] k, float[] v, float[] probabilities, float[] dOutput, int batch, int length, int heads, int keyValueHeads, int headDim, float scale)
    {
        var dq = new float[q.Length];
        var dk = new float[k.Length];
        var dv = new float[v.Length];
        var group = heads / keyValueHeads;
        MatrixMath.For(batch * keyValueHeads, (long)group * length * length * headDim, (start, end) =>
        {
            var dp = new float[length];
            for (var bk = start; bk < end; bk++)
            {
                var (b, kvh) = (bk / keyValueHeads, bk % keyValueHeads);
                for (var h = kvh * group; h < (kvh + 1) * group; h++)
                {
                    for (var i = 0; i < length; i++)
                    {
                        var qOffset = (((b * length) + i) * heads * headDim) + (h * headDim);
                        var gradient = dOutput.AsSpan(qOffset, headDim);
                        var p = probabilities.AsSpan(((((b * heads) + h) * length) + i) * length, i + 1);
                        for (var j = 0; j <= i; j++)
                        {
                            var kvOffset = (((b * length) + j) * keyValueHeads * headDim) + (kvh * headDim);
                            dp[j] = TensorPrimitives.Dot(gradient, v.AsSpan(kvOffset, headDim));
                            TensorPrimitives.MultiplyAdd(gradient, p[j], dv.AsSpan(kvOffset, headDim), dv.AsSpan(kvOffset, headDim));
                        }

                        // softmax backward: ds = p * (dp - sum(p * dp)), then the scale of the scores.
                        var centre = TensorPrimitives.Dot(p, dp.AsSpan(0, i + 1));
                        var query = q.AsSpan(qOffset, headDim);
                        var queryGradient = dq.AsSpan(qOffset, headDim);
                        for (var j = 0; j <= i; j++)
                        {
                            var ds = p[j] * (dp[j] - centre) * scale;
                            if (ds == 0)
                            {
                                continue;
                            }

                            var kvOffset = (((b * length) + j) * keyValueHeads * headDim) + (kvh * headDim);
                            TensorPrimitives.MultiplyAdd(k.AsSpan(kvOffset, headDim), ds, queryGradient, queryGradient);
                            TensorPrimitives.MultiplyAdd(query, ds, dk.AsSpan(kvOffset, headDim), dk.AsSpan(kvOffset, headDim));
                        }
                    }
                }
            }
        });
        return (dq, dk, dv);
    }

    /// <summary>a = silu(g) * u elementwise.</summary>
    public static float[] SiluMultiply(float[] gate, float[] up)
    {
        var output = new float[gate.Length];
        for (var i = 0; i < gate.Length; i++)
        {
            var g = gate[i];
            output[i] = g / (1 + MathF.Exp(-g)) * up[i];
        }

        return output;
    }

    /// <summary>dg = da * u * sigma(g) (1 + g (1 - sigma(g))), du = da * silu(g).</summary>
    public static (float[] Dg, float[] Du) SiluMultiplyBackward(float[] gate, float[] up, float[] da)
    {
        var dg = new float[gate.Length];
        var du = new float[gate.Length];
        for (var i = 0; i < gate.Length; i++)
        {
            var g = gate[i];
            var sigma = 1 / (1 + MathF.Exp(-g));
            du[i] = da[i] * g * sigma;
            dg[i] = da[i] * up[i] * sigma * (1 + (g * (1 - sigma)));
        }

        return (dg, du);
    }

    /// <summary>
    /// Sum over rows of -log softmax(logits)[target] and, in place, logits := dLoss/dlogits * gradientScale
    /// (softmax - onehot, scaled).
    /// </summary>
    public static double CrossEntropy(float[] logits, ReadOnlySpan<int> targets, int vocabulary, float gradientScale)
    {
        var rows = targets.Length;
        var losses = new double[rows];
        var targetArray = targets.ToArray();
        MatrixMath.For(rows, vocabulary * 4, (start, end) =>
        {
            for (var r = start; r < end; r++)
            {
                var row = logits.AsSpan(r * vocabulary, vocabulary);
                var max = TensorPrimitives.Max(row);
                double sum = 0;
                foreach (var z in row)
                {
                    sum += Math.Exp(z - max);
                }

                var logSum = max + Math.Log(sum);
                losses[r] = logSum - row[targetArray[r]];
                for (var i = 0; i < vocabulary; i++)
                {
                    row[i] = (float)Math.Exp(row[i] - logSum) * gradientScale;
                }

                row[targetArray[r]] -= gradientScale;
            }
        });
        return losses.Sum();
    }
}
