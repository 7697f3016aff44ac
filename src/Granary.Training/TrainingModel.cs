using Granary.Models;
using Granary.Models.Configuration;
using Granary.Tensors;
using Granary.Tensors.Cuda;

namespace Granary.Training;

/// <summary>
/// A <see cref="CausalLanguageModel"/> (loaded on the CPU backend) prepared for training: an f32 forward pass that
/// records what the backward pass needs, and exact gradients of the summed cross-entropy of the target tokens.
/// LoRA reads the frozen weights through the model (so they stay bf16 or quantized); full fine-tuning copies every
/// weight into a trainable f32 parameter. The matrix products run on <see cref="FineTuneOptions.Device"/> (a GPU
/// keeps an f32 copy of the frozen weights); activations, gradients and parameters live in host memory.
/// Dispose it to release a GPU it opened.
/// </summary>
public sealed class TrainingModel : IDisposable
{
    private readonly LinearWeight? _frozenEmbedding;
    private readonly float[] _inverseFrequencies;
    private readonly IMatrixProducts _products;

    private TrainingModel(
        ModelConfig config, FineTuneOptions options, IMatrixProducts products, LinearWeight? frozenEmbedding, Parameter? embedding,
        IReadOnlyList<TrainingLayer> layers, Parameter finalNorm, TrainableLinear outputHead)
    {
        Config = config;
        _products = products;
        Options = options;
        _frozenEmbedding = frozenEmbedding;
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        OutputHead = outputHead;
        _inverseFrequencies = config.Rope.ComputeInverseFrequencies(config.HeadDim);
    }

    public ModelConfig Config { get; }

    public FineTuneOptions Options { get; }

    /// <summary>Where the matrix products run: "cpu", or the GPU ("cuda:0 NVIDIA H100 ...").</summary>
    public string Device => _products.Device;

    /// <summary>The embedding table when it is trained (full fine-tuning).</summary>
    public Parameter? Embedding { get; }

    public IReadOnlyList<TrainingLayer> Layers { get; }

    public Parameter FinalNorm { get; }

    public TrainableLinear OutputHead { get; }

    /// <summary>Every parameter once (a tied head shares the embedding), in a fixed order.</summary>
    public IReadOnlyList<Parameter> Parameters =>
        new IEnumerable<Parameter?>[] { [Embedding], Layers.SelectMany(l => l.Parameters()), [FinalNorm], OutputHead.Parameters() }
            .SelectMany(p => p).OfType<Parameter>().Distinct().ToArray();

    public IReadOnlyList<Parameter> TrainableParameters => Parameters.Where(p => p.Trainable).ToArray();

    /// <summary>
    /// Prepares <paramref name="model"/> (on the CPU backend) for training. With <see cref="TrainingDevice.Cuda"/> the
    /// products run on <paramref name="gpu"/>, which the caller keeps and disposes, or, when it is null, on a GPU this
    /// model opens (<see cref="FineTuneOptions.CudaDevice"/>) and releases when disposed.
    /// </summary>
    /// <exception cref="CudaException">The CUDA device is asked for and no GPU or CUDA library is usable.</exception>
    public static TrainingModel Create(CausalLanguageModel model, FineTuneOptions options, CudaBackend? gpu = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (model.Backend is not Granary.Tensors.Cpu.CpuBackend)
        {
            throw new NotSupportedException(
                $"Training reads the model from the CPU backend; the model is on '{model.Backend.Name}'. Load it on the CPU and set {nameof(FineTuneOptions)}.{nameof(FineTuneOptions.Device)} to run the products on a GPU.");
        }

        if (gpu is not null && options.Device != TrainingDevice.Cuda)
        {
            throw new ArgumentException($"A GPU was given but the products run on {options.Device}; set {nameof(FineTuneOptions)}.{nameof(FineTuneOptions.Device)} to Cuda.", nameof(gpu));
        }

        var config = model.Config;
        if (model.Embedding is not { } sourceEmbedding || model.FinalNorm is not { } sourceNorm || model.OutputHead is not { } sourceHead)
        {
            throw new NotSupportedException("Training needs the whole model; this one holds only a shard of its layers.");
        }

        IMatrixProducts products = options.Device switch
        {
            TrainingDevice.Cuda when gpu is not null => new CudaMatrixProducts(gpu, ownsGpu: false),
            TrainingDevice.Cuda => CudaMatrixProducts.Open(options.CudaDevice),
            _ => CpuMatrixProducts.Instance,
        };
        try
        {
            var full = options.Type == FineTuneType.Full;
            Parameter? embedding = full
                ? new Parameter("model.embed_tokens.weight", FrozenWeights.ToArray(sourceEmbedding), [config.VocabularySize, config.HiddenSize], trainable: true)
                : null;
            var layers = model.Layers.Select(l => TrainingLayer.Create(config, l, full, products)).ToArray();
            var finalNorm = new Parameter("model.norm.weight", FrozenWeights.ToArray(sourceNorm), [config.HiddenSize], full);
            var head = config.TieWordEmbeddings && embedding is not null
                ? new TrainableLinear("lm_head", embedding, products)
                : new TrainableLinear("lm_head", sourceHead, full, products);
            var training = new TrainingModel(config, options, products, full ? null : sourceEmbedding, embedding, layers, finalNorm, head);
            if (!full)
            {
                training.AttachAdapters(options.Lora, options.Seed, decomposed: options.Type == FineTuneType.Dora);
            }

            return training;
        }
        catch
        {
            products.Dispose();
            throw;
        }
    }

    /// <summary>Releases the GPU copies of the frozen weights, and the GPU when this model opened it.</summary>
    public void Dispose() => _products.Dispose();

    /// <summary>Linears that carry adapters, by module path.</summary>
    public IReadOnlyDictionary<string, TrainableLinear> AdaptedLinears =>
        Layers.SelectMany(l => l.Linears()).Where(l => l.Lora is not null).ToDictionary(l => l.Name);

    /// <summary>Sum over target tokens of -log p(target) (no gradients), and the number of targets.</summary>
    public (double LossSum, int Tokens) Evaluate(TokenBatch batch) => Run(batch, gradientScale: null, seed: 0);

    /// <summary>
    /// Forward and backward: adds gradientScale * d(sum of target losses)/dparameter to every trainable gradient.
    /// Dropout (when configured) draws from <paramref name="seed"/>.
    /// </summary>
    public (double LossSum, int Tokens) AccumulateGradients(TokenBatch batch, float gradientScale, ulong seed = 0) =>
        Run(batch, gradientScale, seed);

    public void ZeroGradients()
    {
        foreach (var parameter in TrainableParameters)
        {
            Array.Clear(parameter.Gradient!);
        }
    }

    private (double LossSum, int Tokens) Run(TokenBatch batch, float? gradientScale, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(batch);
        using var threads = MatrixMath.LimitThreads(Options.Threads);
        var shape = new BatchShape(batch.BatchSize, batch.Length);
        var (targetRows, targets) = batch.Targets();
        if (targets.Length == 0)
        {
            return (0, 0);
        }

        var training = gradientScale is not null;
        var context = new TrainingContext(training, seed);
        var (cos, sin) = TrainingOps.RopeTables(_inverseFrequencies, batch.Length, Config.Rope.AttentionScaling);
        var rope = new RotaryTables(cos, sin);

        // Layers below the lowest one with trainable parameters need neither a tape nor input gradients.
        var lowest = Embedding is not null ? 0 : FirstTrainableLayer();
        var hidden = Embed(batch.Ids);
        var tapes = new TrainingLayer.LayerTape?[Layers.Count];
        var inputs = new float[]?[Layers.Count];
        for (var i = 0; i < Layers.Count; i++)
        {
            var keep = training && i >= lowest;
            inputs[i] = keep ? hidden : null;
            hidden = Layers[i].Forward(hidden, shape, rope, context, out var tape);
            tapes[i] = keep && !Options.GradientCheckpointing ? tape : null;
        }

        var width = Config.HiddenSize;
        var normed = new float[hidden.Length];
        var finalInverse = TrainingOps.RmsNorm(hidden, FinalNorm.Value, width, Config.RmsNormEpsilon, normed);
        var selected = new float[targetRows.Length * width];
        for (var i = 0; i < targetRows.Length; i++)
        {
            normed.AsSpan(targetRows[i] * width, width).CopyTo(selected.AsSpan(i * width));
        }

        var logits = OutputHead.Forward(selected, targetRows.Length, context, out var headTape);
        var lossSum = TrainingOps.CrossEntropy(logits, targets, Config.VocabularySize, gradientScale ?? 0);
        if (!training)
        {
            return (lossSum, targets.Length);
        }

        var dSelected = OutputHead.Backward(headTape, logits, needInputGradient: true)!;
        var dNormed = new float[normed.Length];
        for (var i = 0; i < targetRows.Length; i++)
        {
            dSelected.AsSpan(i * width, width).CopyTo(dNormed.AsSpan(targetRows[i] * width));
        }

        var gradient = TrainingOps.RmsNormBackward(hidden, FinalNorm.Value, finalInverse, dNormed, width, FinalNorm.Gradient);
        for (var i = Layers.Count - 1; i >= lowest; i--)
        {
            var tape = tapes[i];
            if (tape is null)
            {
                Layers[i].Forward(inputs[i]!, shape, rope, context, out var recomputed);
                tape = recomputed;
            }

            tapes[i] = null;
            var needInput = i > lowest || Embedding is not null;
            gradient = Layers[i].Backward(tape, gradient, shape, rope, needInput)!;
            if (!needInput)
            {
                break;
            }
        }

        if (Embedding is not null)
        {
            var table = Embedding.Gradient!;
            for (var r = 0; r < batch.Ids.Length; r++)
            {
                var row = table.AsSpan(batch.Ids[r] * width, width);
                System.Numerics.Tensors.TensorPrimitives.Add(row, gradient.AsSpan(r * width, width), row);
            }
        }

        return (lossSum, targets.Length);
    }

    private int FirstTrainableLayer()
    {
        for (var i = 0; i < Layers.Count; i++)
        {
            if (Layers[i].HasTrainable)
            {
                return i;
            }
        }

        return Layers.Count;
    }

    private float[] Embed(int[] ids)
    {
        var width = Config.HiddenSize;
        var hidden = new float[ids.Length * width];
        for (var r = 0; r < ids.Length; r++)
        {
            if ((uint)ids[r] >= (uint)Config.VocabularySize)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), ids[r], $"Token id outside the vocabulary [0, {Config.VocabularySize}).");
            }

            var row = hidden.AsSpan(r * width, width);
            if (Embedding is not null)
            {
                Embedding.Value.AsSpan(ids[r] * width, width).CopyTo(row);
            }
            else
            {
                FrozenWeights.ReadRows(_frozenEmbedding!, ids[r], 1, row);
            }
        }

        return hidden;
    }

    private void AttachAdapters(LoraOptions lora, int seed, bool decomposed)
    {
        var first = lora.LayerCount < 0 ? 0 : Math.Max(0, Layers.Count - lora.LayerCount);
        var random = new Random(seed);
        var matched = new HashSet<string>(StringComparer.Ordinal);
        foreach (var layer in Layers.Skip(first))
        {
            var prefix = $"model.layers.{layer.Index}.";
            foreach (var linear in layer.Linears())
            {
                var keys = lora.Keys.Where(k => KeyMatches(k, linear.Name[prefix.Length..])).ToArray();
                if (keys.Length == 0)
                {
                    continue;
                }

                matched.UnionWith(keys);
                var adapter = new LoraAdapter(linear.Name, linear.InFeatures, linear.OutFeatures, lora.Rank, lora.Scale, lora.Dropout, decomposed);
                var bound = 1 / MathF.Sqrt(linear.InFeatures);
                foreach (ref var a in adapter.A.Value.AsSpan())
                {
                    a = ((random.NextSingle() * 2) - 1) * bound;
                }

                linear.AttachLora(adapter);
                if (adapter.Magnitude is { } magnitude)
                {
                    // B starts at zero, so ||W + scale B A|| = ||W||: the adapted layer starts equal to the base one.
                    linear.AdaptedRowNorms().CopyTo(magnitude.Value, 0);
                }
            }
        }

        var unknown = lora.Keys.Where(k => !matched.Contains(k)).ToArray();
        if (unknown.Length > 0)
        {
            throw new ArgumentException(
                $"LoRA keys match no linear of layers {first}..{Layers.Count - 1}: {string.Join(", ", unknown)}. "
                + "Keys are paths inside a layer such as self_attn.q_proj, mlp.down_proj, mlp.experts.down_proj (experts only) or mlp.gate (the MoE router).");
        }
    }

    // "mlp.experts.3.gate_proj" is matched by "mlp.experts.gate_proj" and by "mlp.gate_proj" (as peft maps the dense
    // projections onto a mixture's experts); every other linear by its own path.
    private static bool KeyMatches(string key, string path)
    {
        const string experts = "mlp.experts.";
        if (!path.StartsWith(experts, StringComparison.Ordinal))
        {
            return key == path;
        }

        var projection = path[(path.IndexOf('.', experts.Length) + 1)..];
        return key == experts + projection || key == "mlp." + projection;
    }
}
