using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>
/// Activation buffers for up to <see cref="Rows"/> tokens, allocated once per model so prefill chunks and decode
/// steps reuse them. Views for a given token count are built once and kept, so a decode step allocates no buffers.
/// </summary>
internal sealed class ForwardScratch : IDisposable
{
    // Views for a handful of token counts are kept: the full chunk, one-token decode and the odd last chunk.
    // Batched decode steps add one count per batch size, so a few more than that are kept.
    private const int MaxCachedViewSets = 24;

    // Rows the output head runs on at once: a decode step of a whole batch; more are done in turns.
    public const int MaxHeadRows = 16;

    private readonly ModelConfig _config;
    private readonly ModelPartition _partition;
    private readonly Tensor[] _hidden;
    private readonly Tensor _normed;
    private readonly Tensor _query;
    private readonly Tensor _key;
    private readonly Tensor _value;
    private readonly Tensor? _queryNormed;
    private readonly Tensor? _keyNormed;
    private readonly Tensor _attention;
    private readonly Tensor _projected;
    private readonly Tensor _gate;
    private readonly Tensor _up;
    private readonly Tensor _activation;
    private readonly Tensor? _routerLogits;
    private readonly Tensor? _expertIndices;
    private readonly Tensor? _expertWeights;
    private readonly Dictionary<int, StepTensors> _views = [];

    /// <summary>Buffers sized for this rank's share of each layer (its heads, MLP features and vocabulary run).</summary>
    public ForwardScratch(IComputeBackend backend, ModelConfig config, ModelPartition partition, int rows)
    {
        _config = config;
        _partition = partition;
        Rows = rows;
        var dtype = backend.ActivationDType;
        var queryWidth = partition.Heads.Count * config.HeadDim;
        var keyValueWidth = partition.KeyValueHeadCount * config.HeadDim;
        var intermediate = partition.TensorSize == 1 ? config.IntermediateSize : partition.Intermediate.Count;
        _hidden = [backend.Allocate(dtype, rows, config.HiddenSize), backend.Allocate(dtype, rows, config.HiddenSize)];
        _normed = backend.Allocate(dtype, rows, config.HiddenSize);
        _query = backend.Allocate(dtype, rows, queryWidth);
        _key = backend.Allocate(dtype, rows, keyValueWidth);
        _value = backend.Allocate(dtype, rows, keyValueWidth);
        if (config.QueryKeyNorm)
        {
            _queryNormed = backend.Allocate(dtype, rows, queryWidth);
            _keyNormed = backend.Allocate(dtype, rows, keyValueWidth);
        }

        _attention = backend.Allocate(dtype, rows, queryWidth);
        _projected = backend.Allocate(dtype, rows, config.HiddenSize);
        _gate = backend.Allocate(dtype, rows, intermediate);
        _up = backend.Allocate(dtype, rows, intermediate);
        _activation = backend.Allocate(dtype, rows, intermediate);
        if (config.MixtureOfExperts is { } moe)
        {
            _routerLogits = backend.Allocate(dtype, rows, moe.ExpertCount);
            _expertIndices = backend.Allocate(DType.I32, rows, moe.ExpertsPerToken);
            _expertWeights = backend.Allocate(DType.F32, rows, moe.ExpertsPerToken);
        }

        HeadRows = Math.Min(rows, MaxHeadRows);
        HeadInput = backend.Allocate(dtype, HeadRows, config.HiddenSize);
        HeadNormed = backend.Allocate(dtype, HeadRows, config.HiddenSize);
        HeadLogits = backend.Allocate(dtype, HeadRows, partition.Vocabulary.Count);
    }

    public int Rows { get; }

    /// <summary>Positions the output head runs on at once (the last position of each sequence of a batch).</summary>
    public int HeadRows { get; }

    /// <summary>The hidden states of the positions whose logits are wanted, gathered from the step's rows.</summary>
    public Tensor HeadInput { get; }

    /// <summary>Their final-norm output, so decode runs lm_head only on the rows it samples from.</summary>
    public Tensor HeadNormed { get; }

    /// <summary>Logits of this rank's vocabulary run for those positions.</summary>
    public Tensor HeadLogits { get; }

    public StepTensors For(int n)
    {
        if (n < 1 || n > Rows)
        {
            throw new ArgumentOutOfRangeException(nameof(n), n, $"A step holds 1 to {Rows} tokens.");
        }

        if (!_views.TryGetValue(n, out var views))
        {
            if (_views.Count >= MaxCachedViewSets)
            {
                _views.Clear();
            }

            views = new StepTensors(this, n);
            _views.Add(n, views);
        }

        return views;
    }

    public void Dispose()
    {
        foreach (var tensor in new[] { _hidden[0], _hidden[1], _normed, _query, _key, _value, _attention, _projected, _gate, _up, _activation, HeadInput, HeadNormed, HeadLogits })
        {
            tensor.Dispose();
        }

        _queryNormed?.Dispose();
        _keyNormed?.Dispose();
        _routerLogits?.Dispose();
        _expertIndices?.Dispose();
        _expertWeights?.Dispose();
    }

    /// <summary>Views of the scratch buffers for one step of n tokens, shaped for each operation.</summary>
    internal sealed class StepTensors
    {
        public StepTensors(ForwardScratch scratch, int n)
        {
            var config = scratch._config;
            var heads = scratch._partition.Heads.Count;
            var kvHeads = scratch._partition.KeyValueHeadCount;
            var headDim = config.HeadDim;
            Count = n;
            Hidden = [scratch._hidden[0].Slice(0, n), scratch._hidden[1].Slice(0, n)];
            Normed = scratch._normed.Slice(0, n);
            Query = scratch._query.Slice(0, n);
            Key = scratch._key.Slice(0, n);
            Value = scratch._value.Slice(0, n);
            QueryHeads = Query.Reshape(n, heads, headDim);
            KeyHeads = Key.Reshape(n, kvHeads, headDim);
            ValueHeads = Value.Reshape(n, kvHeads, headDim);
            if (config.QueryKeyNorm)
            {
                QueryNormedHeads = scratch._queryNormed!.Slice(0, n).Reshape(n, heads, headDim);
                KeyNormedHeads = scratch._keyNormed!.Slice(0, n).Reshape(n, kvHeads, headDim);
            }

            // Rope runs in place on these: the normed heads when the model norms q and k, the projections otherwise.
            RotatedQueryHeads = QueryNormedHeads ?? QueryHeads;
            RotatedKeyHeads = KeyNormedHeads ?? KeyHeads;

            Attention = scratch._attention.Slice(0, n);
            AttentionHeads = Attention.Reshape(n, heads, headDim);
            Projected = scratch._projected.Slice(0, n);
            Gate = scratch._gate.Slice(0, n);
            Up = scratch._up.Slice(0, n);
            Activation = scratch._activation.Slice(0, n);
            RouterLogits = scratch._routerLogits?.Slice(0, n);
            ExpertIndices = scratch._expertIndices?.Slice(0, n);
            ExpertWeights = scratch._expertWeights?.Slice(0, n);
        }

        public int Count { get; }

        /// <summary>Two residual-stream buffers used alternately, so no operation writes over its own input.</summary>
        public Tensor[] Hidden { get; }

        public Tensor Normed { get; }

        public Tensor Query { get; }

        public Tensor Key { get; }

        public Tensor Value { get; }

        public Tensor QueryHeads { get; }

        public Tensor KeyHeads { get; }

        public Tensor ValueHeads { get; }

        public Tensor? QueryNormedHeads { get; }

        public Tensor? KeyNormedHeads { get; }

        public Tensor RotatedQueryHeads { get; }

        public Tensor RotatedKeyHeads { get; }

        public Tensor Attention { get; }

        public Tensor AttentionHeads { get; }

        public Tensor Projected { get; }

        public Tensor Gate { get; }

        public Tensor Up { get; }

        public Tensor Activation { get; }

        public Tensor? RouterLogits { get; }

        public Tensor? ExpertIndices { get; }

        public Tensor? ExpertWeights { get; }
    }
}
