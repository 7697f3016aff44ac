using Granary.Models.Configuration;
using Granary.Models.Transformer;

namespace Granary.Training;

/// <summary>One pre-norm decoder layer in training: x + attn(norm(x)), then + mlp(norm(...)).</summary>
public sealed class TrainingLayer
{
    private readonly ModelConfig _config;
    private readonly float _scale;

    private TrainingLayer(
        ModelConfig config, int index, Parameter inputNorm, TrainableLinear query, TrainableLinear key, TrainableLinear value,
        TrainableLinear output, Parameter? queryNorm, Parameter? keyNorm, Parameter postAttentionNorm, TrainingFeedForward feedForward)
    {
        _config = config;
        _scale = (float)(1.0 / Math.Sqrt(config.HeadDim));
        Index = index;
        InputNorm = inputNorm;
        Query = query;
        Key = key;
        Value = value;
        Output = output;
        QueryNorm = queryNorm;
        KeyNorm = keyNorm;
        PostAttentionNorm = postAttentionNorm;
        FeedForward = feedForward;
    }

    public int Index { get; }

    public Parameter InputNorm { get; }

    public TrainableLinear Query { get; }

    public TrainableLinear Key { get; }

    public TrainableLinear Value { get; }

    public TrainableLinear Output { get; }

    public Parameter? QueryNorm { get; }

    public Parameter? KeyNorm { get; }

    public Parameter PostAttentionNorm { get; }

    public TrainingFeedForward FeedForward { get; }

    public IEnumerable<TrainableLinear> Linears() => [Query, Key, Value, Output, .. FeedForward.Linears()];

    public IEnumerable<Parameter> Parameters()
    {
        IEnumerable<Parameter?> norms = [InputNorm, QueryNorm, KeyNorm, PostAttentionNorm];
        return norms.OfType<Parameter>().Concat(Linears().SelectMany(l => l.Parameters()));
    }

    internal bool HasTrainable => Parameters().Any(p => p.Trainable);

    internal static TrainingLayer Create(ModelConfig config, DecoderLayer layer, bool trainBase, IMatrixProducts products)
    {
        var prefix = $"model.layers.{layer.Index}.";
        var attention = layer.Attention;
        TrainableLinear Linear(string name, Granary.Tensors.LinearWeight weight) => new(prefix + name, weight, trainBase, products);
        Parameter Vector(string name, Granary.Tensors.Tensor tensor) =>
            new(prefix + name, FrozenWeights.ToArray(tensor), [(int)tensor.ElementCount], trainBase);

        TrainingFeedForward feedForward = layer.FeedForward switch
        {
            DenseFeedForward dense => new TrainingSwiGlu(
                Linear("mlp.gate_proj", dense.Gate), Linear("mlp.up_proj", dense.Up), Linear("mlp.down_proj", dense.Down)),
            MixtureOfExpertsFeedForward moe => TrainingMixtureOfExperts.Create(moe, config.MixtureOfExperts!, prefix + "mlp.", trainBase, products),
            _ => throw new NotSupportedException($"Feed-forward {layer.FeedForward.GetType().Name} cannot be trained."),
        };
        return new TrainingLayer(
            config,
            layer.Index,
            Vector("input_layernorm.weight", layer.InputNorm),
            Linear("self_attn.q_proj", attention.QueryProjection),
            Linear("self_attn.k_proj", attention.KeyProjection),
            Linear("self_attn.v_proj", attention.ValueProjection),
            Linear("self_attn.o_proj", attention.OutputProjection),
            attention.QueryNorm is null ? null : Vector("self_attn.q_norm.weight", attention.QueryNorm),
            attention.KeyNorm is null ? null : Vector("self_attn.k_norm.weight", attention.KeyNorm),
            Vector("post_attention_layernorm.weight", layer.PostAttentionNorm),
            feedForward);
    }

    internal float[] Forward(float[] x, BatchShape shape, RotaryTables rope, TrainingContext context, out LayerTape tape)
    {
        var rows = shape.Rows;
        var (heads, keyValueHeads, headDim) = (_config.AttentionHeadCount, _config.KeyValueHeadCount, _config.HeadDim);
        var epsilon = _config.RmsNormEpsilon;
        var normed = new float[x.Length];
        var inputInverse = TrainingOps.RmsNorm(x, InputNorm.Value, _config.HiddenSize, epsilon, normed);

        var queryRaw = Query.Forward(normed, rows, context, out var queryTape);
        var keyRaw = Key.Forward(normed, rows, context, out var keyTape);
        var value = Value.Forward(normed, rows, context, out var valueTape);
        float[]? queryInverse = null, keyInverse = null;
        float[] query = queryRaw, key = keyRaw;
        if (QueryNorm is not null && KeyNorm is not null)
        {
            query = new float[queryRaw.Length];
            key = new float[keyRaw.Length];
            queryInverse = TrainingOps.RmsNorm(queryRaw, QueryNorm.Value, headDim, epsilon, query);
            keyInverse = TrainingOps.RmsNorm(keyRaw, KeyNorm.Value, headDim, epsilon, key);
        }
        else
        {
            // Rope rotates in place; the projections' outputs stay untouched for clarity of the tape.
            query = (float[])queryRaw.Clone();
            key = (float[])keyRaw.Clone();
        }

        TrainingOps.Rope(query, shape.Length, heads, headDim, rope.Cos, rope.Sin, inverse: false);
        TrainingOps.Rope(key, shape.Length, keyValueHeads, headDim, rope.Cos, rope.Sin, inverse: false);
        var attended = new float[rows * heads * headDim];
        var probabilities = TrainingOps.Attention(query, key, value, shape.Batch, shape.Length, heads, keyValueHeads, headDim, _scale, attended);
        var projected = Output.Forward(attended, rows, context, out var outputTape);
        var residual = new float[x.Length];
        System.Numerics.Tensors.TensorPrimitives.Add(x, projected, residual);

        var postNormed = new float[x.Length];
        var postInverse = TrainingOps.RmsNorm(residual, PostAttentionNorm.Value, _config.HiddenSize, epsilon, postNormed);
        var mlp = FeedForward.Forward(postNormed, rows, context, out var feedForwardTape);
        var output = new float[x.Length];
        System.Numerics.Tensors.TensorPrimitives.Add(residual, mlp, output);
        tape = new LayerTape(
            x, inputInverse, queryTape, keyTape, valueTape, queryRaw, keyRaw, queryInverse, keyInverse, query, key, value,
            probabilities, outputTape, residual, postInverse, feedForwardTape);
        return output;
    }

    internal float[]? Backward(LayerTape t, float[] dy, BatchShape shape, RotaryTables rope, bool needInputGradient)
    {
        var (heads, keyValueHeads, headDim) = (_config.AttentionHeadCount, _config.KeyValueHeadCount, _config.HeadDim);
        var hidden = _config.HiddenSize;

        var dPostNormed = FeedForward.Backward(t.FeedForward, dy, needInputGradient: true)!;
        var dResidual = TrainingOps.RmsNormBackward(t.Residual, PostAttentionNorm.Value, t.PostInverse, dPostNormed, hidden, PostAttentionNorm.Gradient);
        System.Numerics.Tensors.TensorPrimitives.Add(dResidual, dy, dResidual);

        var dAttended = Output.Backward(t.Output, dResidual, needInputGradient: true)!;
        var (dq, dk, dv) = TrainingOps.AttentionBackward(
            t.Query, t.Key, t.Value, t.Probabilities, dAttended, shape.Batch, shape.Length, heads, keyValueHeads, headDim, _scale);
        TrainingOps.Rope(dq, shape.Length, heads, headDim, rope.Cos, rope.Sin, inverse: true);
        TrainingOps.Rope(dk, shape.Length, keyValueHeads, headDim, rope.Cos, rope.Sin, inverse: true);
        if (QueryNorm is not null && KeyNorm is not null)
        {
            dq = TrainingOps.RmsNormBackward(t.QueryRaw, QueryNorm.Value, t.QueryInverse!, dq, headDim, QueryNorm.Gradient);
            dk = TrainingOps.RmsNormBackward(t.KeyRaw, KeyNorm.Value, t.KeyInverse!, dk, headDim, KeyNorm.Gradient);
        }

        var dNormed = Query.Backward(t.QueryProjection, dq, needInputGradient: true)!;
        System.Numerics.Tensors.TensorPrimitives.Add(dNormed, Key.Backward(t.KeyProjection, dk, needInputGradient: true)!, dNormed);
        System.Numerics.Tensors.TensorPrimitives.Add(dNormed, Value.Backward(t.ValueProjection, dv, needInputGradient: true)!, dNormed);
        if (!needInputGradient && InputNorm.Gradient is null)
        {
            return null;
        }

        var dx = TrainingOps.RmsNormBackward(t.Input, InputNorm.Value, t.InputInverse, dNormed, hidden, InputNorm.Gradient);
        System.Numerics.Tensors.TensorPrimitives.Add(dx, dResidual, dx);
        return needInputGradient ? dx : null;
    }

    internal sealed record LayerTape(
        float[] Input,
        float[] InputInverse,
        LinearTape QueryProjection,
        LinearTape KeyProjection,
        LinearTape ValueProjection,
        float[] QueryRaw,
        float[] KeyRaw,
        float[]? QueryInverse,
        float[]? KeyInverse,
        float[] Query,
        float[] Key,
        float[] Value,
        float[] Probabilities,
        LinearTape Output,
        float[] Residual,
        float[] PostInverse,
        object FeedForward);
}

/// <summary>A right-padded batch of <see cref="Batch"/> sequences of <see cref="Length"/> tokens.</summary>
internal readonly record struct BatchShape(int Batch, int Length)
{
    public int Rows => Batch * Length;
}

internal sealed record RotaryTables(float[] Cos, float[] Sin);
