namespace Granary.Training;

/// <summary>Updates parameters from their gradients; its state can be saved and restored for resuming.</summary>
public abstract class Optimizer
{
    protected Optimizer(IReadOnlyList<Parameter> parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (parameters.Any(p => !p.Trainable))
        {
            throw new ArgumentException("Every optimised parameter must be trainable.", nameof(parameters));
        }

        Parameters = parameters;
    }

    public IReadOnlyList<Parameter> Parameters { get; }

    /// <summary>Updates taken so far.</summary>
    public long Step { get; protected set; }

    public abstract void Update(float learningRate);

    /// <summary>Named state tensors (moments), for checkpoints.</summary>
    public abstract IEnumerable<(string Name, float[] Values)> State();

    public void RestoreState(long step, IReadOnlyDictionary<string, float[]> state)
    {
        foreach (var (name, values) in State())
        {
            if (!state.TryGetValue(name, out var saved) || saved.Length != values.Length)
            {
                throw new InvalidDataException($"Optimizer checkpoint lacks '{name}' of {values.Length} values.");
            }

            saved.CopyTo(values, 0);
        }

        Step = step;
    }
}

/// <summary>Adam with decoupled weight decay, exactly as torch.optim.AdamW (amsgrad off).</summary>
public sealed class AdamW : Optimizer
{
    private readonly float[][] _first;
    private readonly float[][] _second;

    public AdamW(IReadOnlyList<Parameter> parameters, float beta1 = 0.9f, float beta2 = 0.999f, float epsilon = 1e-8f, float weightDecay = 0.01f)
        : base(parameters)
    {
        if (beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1 || epsilon <= 0 || weightDecay < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(parameters), "AdamW needs betas in [0, 1), epsilon > 0 and weight decay >= 0.");
        }

        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
        WeightDecay = weightDecay;
        _first = parameters.Select(p => new float[p.Value.Length]).ToArray();
        _second = parameters.Select(p => new float[p.Value.Length]).ToArray();
    }

    public float Beta1 { get; }

    public float Beta2 { get; }

    public float Epsilon { get; }

    public float WeightDecay { get; }

    public override void Update(float learningRate)
    {
        Step++;
        var correction1 = 1 - Math.Pow(Beta1, Step);
        var correction2Sqrt = (float)Math.Sqrt(1 - Math.Pow(Beta2, Step));
        var stepSize = (float)(learningRate / correction1);
        var decay = 1 - (learningRate * WeightDecay);
        Parallel.For(0, Parameters.Count, i =>
        {
            var value = Parameters[i].Value;
            var gradient = Parameters[i].Gradient!;
            var m = _first[i];
            var v = _second[i];
            for (var j = 0; j < value.Length; j++)
            {
                var g = gradient[j];
                value[j] *= decay;
                m[j] += (g - m[j]) * (1 - Beta1);
                v[j] = (v[j] * Beta2) + ((1 - Beta2) * g * g);
                var denominator = (MathF.Sqrt(v[j]) / correction2Sqrt) + Epsilon;
                value[j] -= stepSize * m[j] / denominator;
            }
        });
    }

    public override IEnumerable<(string Name, float[] Values)> State() =>
        Parameters.SelectMany((p, i) => new[] { (p.Name + ".m", _first[i]), (p.Name + ".v", _second[i]) });
}

/// <summary>Stochastic gradient descent with optional momentum and (coupled) weight decay, as torch.optim.SGD.</summary>
public sealed class Sgd : Optimizer
{
    private readonly float[][] _velocity;

    public Sgd(IReadOnlyList<Parameter> parameters, float momentum = 0, float weightDecay = 0)
        : base(parameters)
    {
        if (momentum is < 0 or >= 1 || weightDecay < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(parameters), "SGD needs momentum in [0, 1) and weight decay >= 0.");
        }

        Momentum = momentum;
        WeightDecay = weightDecay;
        _velocity = parameters.Select(p => new float[momentum > 0 ? p.Value.Length : 0]).ToArray();
    }

    public float Momentum { get; }

    public float WeightDecay { get; }

    public override void Update(float learningRate)
    {
        Step++;
        var first = Step == 1;
        for (var i = 0; i < Parameters.Count; i++)
        {
            var value = Parameters[i].Value;
            var gradient = Parameters[i].Gradient!;
            var velocity = _velocity[i];
            for (var j = 0; j < value.Length; j++)
            {
                var g = gradient[j] + (WeightDecay * value[j]);
                if (Momentum > 0)
                {
                    // torch starts the buffer at the first gradient rather than decaying from zero.
                    velocity[j] = first ? g : (Momentum * velocity[j]) + g;
                    g = velocity[j];
                }

                value[j] -= learningRate * g;
            }
        }
    }

    public override IEnumerable<(string Name, float[] Values)> State() =>
        Momentum > 0 ? Parameters.Select((p, i) => (p.Name + ".momentum", _velocity[i])) : [];
}
