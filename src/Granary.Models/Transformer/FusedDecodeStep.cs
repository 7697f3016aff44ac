using System.Numerics;
using System.Runtime.InteropServices;
using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models.Transformer;

/// <summary>
/// One sequence's one-token decode step on a backend with <see cref="IFusedDecodeBackend"/>: 9 calls a layer instead of
/// 20, with the token id and position read from a device buffer written before each step, so the step of a cache is
/// recorded once (per position range, see <see cref="PositionLimit"/>) and replayed at every later position. The same
/// math as the plain layer path in f32; only the order of some sums differs.
/// Used for a whole model on one device (no tensor or pipeline split) whose layers hold q|k|v and gate|up stacked.
/// </summary>
internal sealed class FusedDecodeStep : IDisposable
{
    // Recordings run attention up to a position limit: the smallest power of two above the position, at least this,
    // so the attention kernel's split over the keys fits the context, and a generation records only a handful of steps.
    private const int MinPositionLimit = 256;

    private readonly IFusedDecodeBackend _backend;
    private readonly ModelConfig _config;
    private readonly LinearWeight _embedding;
    private readonly IReadOnlyList<DecoderLayer> _layers;
    private readonly Tensor _finalNorm;
    private readonly LinearWeight _head;
    private readonly Tensor _inverseFrequencies;
    private readonly Tensor _inputs;
    private readonly Tensor _hidden;
    private readonly Tensor _normed;
    private readonly Tensor _queryKeyValue;
    private readonly Tensor _query;
    private readonly Tensor _attention;
    private readonly Tensor _projected;
    private readonly Tensor _activation;
    private readonly Tensor _logits;
    private readonly int[] _hostInputs = new int[2];

    private FusedDecodeStep(
        IFusedDecodeBackend backend, ModelConfig config, LinearWeight embedding, IReadOnlyList<DecoderLayer> layers, Tensor finalNorm, LinearWeight head, Tensor inverseFrequencies)
    {
        (_backend, _config, _embedding, _layers, _finalNorm, _head, _inverseFrequencies) = (backend, config, embedding, layers, finalNorm, head, inverseFrequencies);
        var queryWidth = config.AttentionHeadCount * config.HeadDim;
        var dtype = backend.ActivationDType;
        var owned = new List<IDisposable>();
        try
        {
            _inputs = owned.Keep(backend.Allocate(DType.I32, 2));
            _hidden = owned.Keep(backend.Allocate(dtype, 1, config.HiddenSize));
            _normed = owned.Keep(backend.Allocate(dtype, 1, config.HiddenSize));
            _queryKeyValue = owned.Keep(backend.Allocate(dtype, 1, queryWidth + (2 * config.KeyValueHeadCount * config.HeadDim)));
            _query = owned.Keep(backend.Allocate(dtype, 1, config.AttentionHeadCount, config.HeadDim));
            _attention = owned.Keep(backend.Allocate(dtype, 1, queryWidth));
            _projected = owned.Keep(backend.Allocate(dtype, 1, config.HiddenSize));
            _activation = owned.Keep(backend.Allocate(dtype, 1, config.IntermediateSize));
            _logits = owned.Keep(backend.Allocate(dtype, 1, config.VocabularySize));
        }
        catch
        {
            owned.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>Why the last recording failed (the step then runs eagerly, unrecorded, from there on); null if none did.</summary>
    public string? RecordingFailure { get; private set; }

    /// <summary>
    /// Whether layers of a model loaded for <paramref name="backend"/> with <paramref name="partition"/> should hold
    /// q|k|v and gate|up stacked: a fused backend computing in f32, the whole model on it, dense SwiGLU layers without
    /// MLP biases, and no quantized q/k/v/gate/up (checked per layer by <see cref="StackedWeights"/> and the caller).
    /// </summary>
    public static bool Wants(IComputeBackend backend, ModelConfig config, ModelPartition partition) =>
        backend is IFusedDecodeBackend && backend.ActivationDType == DType.F32 && partition.TensorSize == 1 && partition.PipelineStages == 1
        && config.MixtureOfExperts is null && !config.MlpBias && config.HeadDim % 2 == 0;

    /// <summary>The step for a loaded model, or null where a layer did not get its weights stacked (quantized or mixed dtypes).</summary>
    public static FusedDecodeStep? TryCreate(
        IComputeBackend backend, ModelConfig config, ModelPartition partition, LinearWeight? embedding, IReadOnlyList<DecoderLayer> layers,
        Tensor? finalNorm, LinearWeight? head, Tensor inverseFrequencies) =>
        Wants(backend, config, partition) && embedding is not null && finalNorm is not null && head is not null && layers.Count > 0 && layers.All(l => l.IsStacked)
            ? new FusedDecodeStep((IFusedDecodeBackend)backend, config, embedding, layers, finalNorm, head, inverseFrequencies)
            : null;

    /// <summary>
    /// Runs token <paramref name="id"/> at position cache.Length, appends its keys and values, advances the cache and
    /// writes the logits (vocab) into <paramref name="logits"/>. The first step of a position range runs eagerly (which
    /// also sizes the backend's scratch), the second is recorded, and later ones replay the recording.
    /// </summary>
    public void Run(int id, KvCache cache, Span<float> logits)
    {
        var position = cache.Length;
        var limit = PositionLimit(position, cache.Capacity);
        (_hostInputs[0], _hostInputs[1]) = (id, position);
        _backend.Write(MemoryMarshal.AsBytes(_hostInputs.AsSpan()), _inputs);
        var recordings = cache.DecodeRecordings;
        recordings.TryGetValue(limit, out var recorded);
        if (recorded is { IsCurrent: false })
        {
            // A scratch block of the backend moved since: run eagerly now (sizing it) and record again next time.
            recorded.Dispose();
            recordings.Remove(limit);
            recorded = null;
        }

        if (recorded is null && recordings.ContainsKey(limit) && RecordingFailure is null)
        {
            if (_backend.TryRecord(() => Step(cache, limit), out recorded, out var failure))
            {
                recordings[limit] = recorded;
            }
            else
            {
                RecordingFailure = failure;
            }
        }

        if (recorded is not null)
        {
            recorded.Replay();
        }
        else
        {
            Step(cache, limit);
            recordings.TryAdd(limit, null);
        }

        _backend.Download(_logits, MemoryMarshal.AsBytes(logits));
        cache.Advance(1);
    }

    public void Dispose()
    {
        foreach (var tensor in new[] { _inputs, _hidden, _normed, _queryKeyValue, _query, _attention, _projected, _activation, _logits })
        {
            tensor.Dispose();
        }
    }

    /// <summary>The attention bound a step at <paramref name="position"/> is recorded with (see <see cref="MinPositionLimit"/>).</summary>
    internal static int PositionLimit(int position, int capacity) =>
        Math.Min(capacity, Math.Max(MinPositionLimit, (int)BitOperations.RoundUpToPowerOf2((uint)position + 1)));

    private void Step(KvCache cache, int limit)
    {
        var b = _backend;
        var position = _inputs.Slice(1, 1);
        var attentionHeads = _attention.Reshape(1, _config.AttentionHeadCount, _config.HeadDim);
        b.Embedding(_embedding, _inputs.Slice(0, 1), _hidden);
        for (var i = 0; i < _layers.Count; i++)
        {
            var layer = _layers[i];
            var attention = layer.Attention;
            var feedForward = (DenseFeedForward)layer.FeedForward;
            var (keys, values) = (cache.Keys[layer.Index]!, cache.Values[layer.Index]!);

            // The residual stream takes the previous layer's MLP output here rather than at that layer's end.
            b.AddRmsNorm(_hidden, i == 0 ? null : _projected, layer.InputNorm, layer.Epsilon, _normed);
            b.Linear(_normed, attention.QueryKeyValue!, _queryKeyValue);
            b.QkNormRopeAppend(
                _queryKeyValue, attention.QueryNorm, attention.KeyNorm, _config.RmsNormEpsilon, position, _inverseFrequencies, _config.Rope.AttentionScaling,
                _query, keys, values);
            b.Attention(_query, keys, values, position, limit, attention.Scale, attentionHeads);
            b.Linear(_attention, attention.OutputProjection, _projected);
            b.AddRmsNorm(_hidden, _projected, layer.PostAttentionNorm, layer.Epsilon, _normed);
            b.SwiGluLinear(_normed, feedForward.GateUp!, _activation);
            b.Linear(_activation, feedForward.Down, _projected);
        }

        b.AddRmsNorm(_hidden, _projected, _finalNorm, _config.RmsNormEpsilon, _normed);
        b.Linear(_normed, _head, _logits);
    }
}
