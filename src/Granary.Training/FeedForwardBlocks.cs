using Granary.Models.Configuration;
using Granary.Models.Transformer;

namespace Granary.Training;

/// <summary>The MLP half of a training layer.</summary>
public abstract class TrainingFeedForward
{
    public abstract IEnumerable<TrainableLinear> Linears();

    internal abstract float[] Forward(float[] x, int rows, TrainingContext context, out object tape);

    internal abstract float[]? Backward(object tape, float[] dy, bool needInputGradient);
}

/// <summary>down(silu(gate(x)) * up(x)); also one expert of a mixture.</summary>
public sealed class TrainingSwiGlu : TrainingFeedForward
{
    internal TrainingSwiGlu(TrainableLinear gate, TrainableLinear up, TrainableLinear down)
    {
        Gate = gate;
        Up = up;
        Down = down;
    }

    public TrainableLinear Gate { get; }

    public TrainableLinear Up { get; }

    public TrainableLinear Down { get; }

    public override IEnumerable<TrainableLinear> Linears() => [Gate, Up, Down];

    internal override float[] Forward(float[] x, int rows, TrainingContext context, out object tape)
    {
        var gate = Gate.Forward(x, rows, context, out var gateTape);
        var up = Up.Forward(x, rows, context, out var upTape);
        var activation = TrainingOps.SiluMultiply(gate, up);
        var output = Down.Forward(activation, rows, context, out var downTape);
        tape = new SwiGluTape(gateTape, upTape, downTape, gate, up);
        return output;
    }

    internal override float[]? Backward(object tape, float[] dy, bool needInputGradient)
    {
        var t = (SwiGluTape)tape;
        var da = Down.Backward(t.Down, dy, needInputGradient: true)!;
        var (dg, du) = TrainingOps.SiluMultiplyBackward(t.GateOutput, t.UpOutput, da);
        var dxGate = Gate.Backward(t.Gate, dg, needInputGradient);
        var dxUp = Up.Backward(t.Up, du, needInputGradient);
        if (dxGate is not null)
        {
            System.Numerics.Tensors.TensorPrimitives.Add(dxGate, dxUp!, dxGate);
        }

        return dxGate;
    }

    private sealed record SwiGluTape(LinearTape Gate, LinearTape Up, LinearTape Down, float[] GateOutput, float[] UpOutput);
}

/// <summary>
/// Qwen3-MoE block: router logits, softmax (f32), top-k, optional renormalisation of the k probabilities, and the
/// weighted sum of the chosen experts' SwiGLU outputs. Gradients reach the router through the routing weights.
/// </summary>
public sealed class TrainingMixtureOfExperts : TrainingFeedForward
{
    private readonly MixtureOfExpertsConfig _config;

    internal TrainingMixtureOfExperts(MixtureOfExpertsConfig config, TrainableLinear router, IReadOnlyList<TrainingSwiGlu> experts)
    {
        _config = config;
        Router = router;
        Experts = experts;
    }

    public TrainableLinear Router { get; }

    public IReadOnlyList<TrainingSwiGlu> Experts { get; }

    public override IEnumerable<TrainableLinear> Linears() => [Router, .. Experts.SelectMany(e => e.Linears())];

    internal static TrainingMixtureOfExperts Create(
        MixtureOfExpertsFeedForward source, MixtureOfExpertsConfig config, string prefix, bool trainBase, IMatrixProducts products)
    {
        var router = new TrainableLinear(prefix + "gate", source.Router, trainBase, products);
        var experts = new TrainingSwiGlu[source.Experts.Count];
        for (var e = 0; e < experts.Length; e++)
        {
            var weights = source.Experts[e] ?? throw new InvalidOperationException($"Expert {e} of {prefix} is not held by this process.");
            var name = $"{prefix}experts.{e}.";
            experts[e] = new TrainingSwiGlu(
                new TrainableLinear(name + "gate_proj", weights.Gate, trainBase, products),
                new TrainableLinear(name + "up_proj", weights.Up, trainBase, products),
                new TrainableLinear(name + "down_proj", weights.Down, trainBase, products));
        }

        return new TrainingMixtureOfExperts(config, router, experts);
    }

    internal override float[] Forward(float[] x, int rows, TrainingContext context, out object tape)
    {
        var hidden = Router.InFeatures;
        var expertCount = Experts.Count;
        var k = _config.ExpertsPerToken;
        var logits = Router.Forward(x, rows, context, out var routerTape);
        var probabilities = new float[rows * expertCount];
        var chosen = new int[rows * k];
        var weights = new float[rows * k];
        for (var r = 0; r < rows; r++)
        {
            var p = probabilities.AsSpan(r * expertCount, expertCount);
            System.Numerics.Tensors.TensorPrimitives.SoftMax(logits.AsSpan(r * expertCount, expertCount), p);
            TopK(p, chosen.AsSpan(r * k, k));
            var sum = 0f;
            for (var j = 0; j < k; j++)
            {
                weights[(r * k) + j] = p[chosen[(r * k) + j]];
                sum += weights[(r * k) + j];
            }

            if (_config.NormalizeTopKProbabilities)
            {
                for (var j = 0; j < k; j++)
                {
                    weights[(r * k) + j] /= sum;
                }
            }
        }

        var output = new float[rows * hidden];
        var routes = new ExpertRoute?[expertCount];
        for (var e = 0; e < expertCount; e++)
        {
            var slots = new List<int>();
            for (var s = 0; s < chosen.Length; s++)
            {
                if (chosen[s] == e)
                {
                    slots.Add(s);
                }
            }

            if (slots.Count == 0)
            {
                continue;
            }

            var input = new float[slots.Count * hidden];
            for (var i = 0; i < slots.Count; i++)
            {
                x.AsSpan(slots[i] / k * hidden, hidden).CopyTo(input.AsSpan(i * hidden));
            }

            var expertOutput = Experts[e].Forward(input, slots.Count, context, out var expertTape);
            for (var i = 0; i < slots.Count; i++)
            {
                var destination = output.AsSpan(slots[i] / k * hidden, hidden);
                System.Numerics.Tensors.TensorPrimitives.MultiplyAdd(expertOutput.AsSpan(i * hidden, hidden), weights[slots[i]], destination, destination);
            }

            routes[e] = new ExpertRoute([.. slots], expertTape, expertOutput);
        }

        tape = new MixtureTape(routerTape, probabilities, chosen, weights, routes);
        return output;
    }

    internal override float[]? Backward(object tape, float[] dy, bool needInputGradient)
    {
        var t = (MixtureTape)tape;
        var hidden = Router.InFeatures;
        var expertCount = Experts.Count;
        var k = _config.ExpertsPerToken;
        var rows = dy.Length / hidden;
        var dx = new float[rows * hidden];
        var weightGradients = new float[rows * k];
        for (var e = 0; e < expertCount; e++)
        {
            if (t.Routes[e] is not { } route)
            {
                continue;
            }

            var count = route.Slots.Length;
            var expertGradient = new float[count * hidden];
            for (var i = 0; i < count; i++)
            {
                var slot = route.Slots[i];
                var gradient = dy.AsSpan(slot / k * hidden, hidden);
                weightGradients[slot] = System.Numerics.Tensors.TensorPrimitives.Dot(gradient, route.Output.AsSpan(i * hidden, hidden));
                System.Numerics.Tensors.TensorPrimitives.Multiply(gradient, t.Weights[slot], expertGradient.AsSpan(i * hidden, hidden));
            }

            if (Experts[e].Backward(route.Tape, expertGradient, needInputGradient: true) is { } expertInputGradient)
            {
                for (var i = 0; i < count; i++)
                {
                    var destination = dx.AsSpan(route.Slots[i] / k * hidden, hidden);
                    System.Numerics.Tensors.TensorPrimitives.Add(destination, expertInputGradient.AsSpan(i * hidden, hidden), destination);
                }
            }
        }

        // Routing weights -> probabilities of the chosen experts -> softmax -> router logits.
        var logitGradients = new float[rows * expertCount];
        for (var r = 0; r < rows; r++)
        {
            var p = t.Probabilities.AsSpan(r * expertCount, expertCount);
            var dp = logitGradients.AsSpan(r * expertCount, expertCount);
            if (_config.NormalizeTopKProbabilities)
            {
                var sum = 0f;
                var weighted = 0f;
                for (var j = 0; j < k; j++)
                {
                    sum += p[t.Chosen[(r * k) + j]];
                    weighted += weightGradients[(r * k) + j] * t.Weights[(r * k) + j];
                }

                for (var j = 0; j < k; j++)
                {
                    dp[t.Chosen[(r * k) + j]] = (weightGradients[(r * k) + j] - weighted) / sum;
                }
            }
            else
            {
                for (var j = 0; j < k; j++)
                {
                    dp[t.Chosen[(r * k) + j]] = weightGradients[(r * k) + j];
                }
            }

            var centre = System.Numerics.Tensors.TensorPrimitives.Dot(p, dp);
            for (var i = 0; i < expertCount; i++)
            {
                dp[i] = p[i] * (dp[i] - centre);
            }
        }

        var routerInputGradient = Router.Backward(t.Router, logitGradients, needInputGradient: true)!;
        System.Numerics.Tensors.TensorPrimitives.Add(dx, routerInputGradient, dx);
        return needInputGradient ? dx : null;
    }

    // Indices of the k largest probabilities, largest first; the lower index wins a tie, as torch.topk does on the CPU.
    private static void TopK(ReadOnlySpan<float> probabilities, Span<int> chosen)
    {
        for (var j = 0; j < chosen.Length; j++)
        {
            var best = -1;
            for (var i = 0; i < probabilities.Length; i++)
            {
                if (chosen[..j].Contains(i))
                {
                    continue;
                }

                if (best < 0 || probabilities[i] > probabilities[best])
                {
                    best = i;
                }
            }

            chosen[j] = best;
        }
    }

    private sealed record ExpertRoute(int[] Slots, object Tape, float[] Output);

    private sealed record MixtureTape(LinearTape Router, float[] Probabilities, int[] Chosen, float[] Weights, ExpertRoute?[] Routes);
}
