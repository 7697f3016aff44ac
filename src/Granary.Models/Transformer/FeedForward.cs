using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>The MLP half of a decoder layer: dense SwiGLU or a routed mixture of SwiGLU experts.</summary>
public abstract class FeedForward : IDisposable
{
    /// <summary>Bytes of weights one token reads (only its routed experts for a mixture).</summary>
    public abstract long WeightBytesPerToken { get; }

    /// <summary>Bytes of weights this rank holds (every held expert of a mixture).</summary>
    public abstract long WeightBytesHeld { get; }

    internal abstract void Forward(IComputeBackend backend, Tensor input, ForwardScratch.StepTensors step, Tensor output);

    public abstract void Dispose();
}

/// <summary>down(silu(gate(x)) * up(x)).</summary>
public sealed class DenseFeedForward : FeedForward
{
    internal DenseFeedForward(LinearWeight gate, LinearWeight up, LinearWeight down, DenseWeight? gateUp = null)
    {
        Gate = gate;
        Up = up;
        Down = down;
        GateUp = gateUp;
    }

    public LinearWeight Gate { get; }

    public LinearWeight Up { get; }

    public LinearWeight Down { get; }

    /// <summary>
    /// gate and up stacked as one [2 inner, hidden] weight for the fused decode step, or null; when set, <see cref="Gate"/>
    /// and <see cref="Up"/> are row views of it.
    /// </summary>
    internal DenseWeight? GateUp { get; }

    public override long WeightBytesPerToken => Gate.WeightBytes + Up.WeightBytes + Down.WeightBytes;

    public override long WeightBytesHeld => WeightBytesPerToken;

    /// <summary>
    /// Loads the MLP, or under tensor parallelism the <paramref name="features"/> of it this rank computes: gate and up
    /// split by output features, down by input features with its bias kept by one rank (<paramref name="keepDownBias"/>).
    /// </summary>
    /// <param name="stack">Load gate and up stacked (<see cref="GateUp"/>) for a backend's fused decode step, where they are dense, bias-free and of one dtype.</param>
    internal static DenseFeedForward Load(
        WeightLoader weights, string prefix, int hidden, int intermediate, bool bias, ShardRange? features = null, bool keepDownBias = true, IComputeBackend? stack = null)
    {
        var (inputSlice, outputSlice) = features is { } range
            ? (LinearSlice.Outputs(range), LinearSlice.Inputs(range, keepDownBias))
            : (LinearSlice.Whole, LinearSlice.Whole);
        var loaded = new List<IDisposable>();
        try
        {
            var gate = loaded.Keep(weights.Linear(prefix + "gate_proj", intermediate, hidden, bias, inputSlice));
            var up = loaded.Keep(weights.Linear(prefix + "up_proj", intermediate, hidden, bias, inputSlice));
            var down = loaded.Keep(weights.Linear(prefix + "down_proj", hidden, intermediate, bias, outputSlice));
            if (stack is not null && !bias && StackedWeights.Stack(stack, [gate, up]) is { } stacked)
            {
                loaded.Add(stacked);
                return new DenseFeedForward(stacked.Views[0], stacked.Views[1], down, stacked.Weight);
            }

            return new DenseFeedForward(gate, up, down);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    internal override void Forward(IComputeBackend backend, Tensor input, ForwardScratch.StepTensors step, Tensor output)
    {
        backend.Linears(input, [Gate, Up], [step.Gate, step.Up]);
        backend.SiluMul(step.Gate, step.Up, step.Activation);
        backend.Linear(step.Activation, Down, output);
    }

    public override void Dispose()
    {
        Gate.Dispose();
        Up.Dispose();
        Down.Dispose();
        GateUp?.Dispose();
    }
}

/// <summary>
/// Qwen3-MoE sparse block: router "gate" logits, softmax, top-k (renormalised when norm_topk_prob), then the
/// weighted sum of the chosen experts. No shared expert.
/// </summary>
public sealed class MixtureOfExpertsFeedForward : FeedForward
{
    private readonly MixtureOfExpertsConfig _config;

    internal MixtureOfExpertsFeedForward(MixtureOfExpertsConfig config, LinearWeight router, IReadOnlyList<ExpertWeights?> experts)
    {
        _config = config;
        Router = router;
        Experts = experts;
    }

    public LinearWeight Router { get; }

    /// <summary>One entry per expert; null for an expert this rank does not hold.</summary>
    public IReadOnlyList<ExpertWeights?> Experts { get; }

    public override long WeightBytesPerToken
    {
        get
        {
            var held = Experts.OfType<ExpertWeights>().ToArray();
            var perExpert = held.Length == 0 ? 0
                : held.Sum(e => e.Gate.WeightBytes + e.Up.WeightBytes + e.Down.WeightBytes) / held.Length;
            // A rank holding a share of the experts runs, on average, that share of the routed ones.
            return Router.WeightBytes + (perExpert * _config.ExpertsPerToken * held.Length / Experts.Count);
        }
    }

    public override long WeightBytesHeld =>
        Router.WeightBytes + Experts.OfType<ExpertWeights>().Sum(e => e.Gate.WeightBytes + e.Up.WeightBytes + e.Down.WeightBytes);

    /// <summary>
    /// Loads the router and the experts in <paramref name="held"/> (all of them without tensor parallelism); the other
    /// experts stay null and are neither mapped nor read.
    /// </summary>
    internal static MixtureOfExpertsFeedForward Load(WeightLoader weights, MixtureOfExpertsConfig config, string prefix, int hidden, ShardRange held)
    {
        var loaded = new List<IDisposable>();
        try
        {
            var router = loaded.Keep(weights.Linear(prefix + "gate", config.ExpertCount, hidden, hasBias: false));
            var experts = new ExpertWeights?[config.ExpertCount];
            var (count, inner) = (config.ExpertCount, config.ExpertIntermediateSize);
            if (weights.Contains(prefix + "switch_mlp.gate_proj.weight"))
            {
                var gates = weights.StackedLinear(prefix + "switch_mlp.gate_proj", count, inner, hidden, held);
                loaded.AddRange(gates.OfType<LinearWeight>());
                var ups = weights.StackedLinear(prefix + "switch_mlp.up_proj", count, inner, hidden, held);
                loaded.AddRange(ups.OfType<LinearWeight>());
                var downs = weights.StackedLinear(prefix + "switch_mlp.down_proj", count, hidden, inner, held);
                loaded.AddRange(downs.OfType<LinearWeight>());
                for (var e = held.Start; e < held.End; e++)
                {
                    experts[e] = new ExpertWeights(gates[e]!, ups[e]!, downs[e]!);
                }
            }
            else
            {
                for (var e = held.Start; e < held.End; e++)
                {
                    var expert = loaded.Keep(DenseFeedForward.Load(weights, $"{prefix}experts.{e}.", hidden, inner, bias: false));
                    experts[e] = new ExpertWeights(expert.Gate, expert.Up, expert.Down);
                }
            }

            return new MixtureOfExpertsFeedForward(config, router, experts);
        }
        catch
        {
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    internal override void Forward(IComputeBackend backend, Tensor input, ForwardScratch.StepTensors step, Tensor output)
    {
        backend.Linear(input, Router, step.RouterLogits!);
        backend.TopKRouting(step.RouterLogits!, _config.ExpertsPerToken, _config.NormalizeTopKProbabilities, step.ExpertIndices!, step.ExpertWeights!);
        backend.MixtureOfExperts(input, step.ExpertIndices!, step.ExpertWeights!, Experts, output);
    }

    public override void Dispose()
    {
        Router.Dispose();
        foreach (var expert in Experts)
        {
            expert?.Gate.Dispose();
            expert?.Up.Dispose();
            expert?.Down.Dispose();
        }
    }
}
