using System.Runtime.InteropServices;
using Granary.Models.Configuration;
using Granary.Models.Safetensors;
using Granary.Models.Sharding;
using Granary.Models.Transformer;
using Granary.Tensors;

namespace Granary.Models;

/// <summary>
/// A decoder-only transformer (Llama, Qwen2, Qwen3, Qwen3-MoE) whose weights live on one compute backend.
/// Forward passes are serialised per model because they share one set of activation buffers.
/// </summary>
public sealed class CausalLanguageModel : IDisposable
{
    private readonly SafetensorsCheckpoint? _checkpoint;
    private readonly ModelPartition _partition;

    private readonly Tensor _inverseFrequencies;
    private readonly int _prefillChunkSize;
    private readonly Lock _forwardLock = new();
    private readonly List<PassSegment> _segments = [];
    private readonly int[] _headSequences = new int[ForwardScratch.MaxHeadRows];
    private ForwardScratch? _scratch;
    private FusedDecodeStep? _fusedDecodeStep;
    private bool _fusedDecode;

    // Host buffers that grow to the largest batch seen: a pass's ids and positions, a batch's logits for sampling, the
    // head's logits before they go to their rows, and the vocabulary runs of the tensor-parallel ranks (padded alike).
    private int[] _passIds = [];
    private int[] _passPositions = [];
    private int[] _singleIds = new int[16];
    private float[] _batchLogits = [];
    private float[] _headStaging = [];
    private float[] _localRuns = [];
    private float[] _paddedRuns = [];
    private float[] _gatheredRuns = [];
    private bool _disposed;

    private CausalLanguageModel(
        ModelConfig config,
        IComputeBackend backend,
        SafetensorsCheckpoint? checkpoint,
        ModelPartition partition,
        LinearWeight? embedding,
        IReadOnlyList<DecoderLayer> layers,
        Tensor? finalNorm,
        LinearWeight? outputHead,
        Tensor inverseFrequencies,
        int prefillChunkSize)
    {
        Config = config;
        Backend = backend;
        _checkpoint = checkpoint;
        _partition = partition;
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        OutputHead = outputHead;
        _inverseFrequencies = inverseFrequencies;
        _prefillChunkSize = prefillChunkSize;
        _fusedDecodeStep = FusedDecodeStep.TryCreate(backend, config, partition, embedding, layers, finalNorm, outputHead, inverseFrequencies);
        _fusedDecode = _fusedDecodeStep is not null;
    }

    public ModelConfig Config { get; }

    public IComputeBackend Backend { get; }

    /// <summary>model.embed_tokens; also the output head when embeddings are tied. Null on later pipeline stages.</summary>
    public LinearWeight? Embedding { get; }

    /// <summary>The decoder layers this rank runs (all of them unless pipeline parallel); see <see cref="DecoderLayer.Index"/>.</summary>
    public IReadOnlyList<DecoderLayer> Layers { get; }

    /// <summary>Null except on the last pipeline stage.</summary>
    public Tensor? FinalNorm { get; }

    /// <summary>
    /// lm_head (the embedding itself when tied); under tensor parallelism this rank's run of the vocabulary.
    /// Null except on the last pipeline stage.
    /// </summary>
    public LinearWeight? OutputHead { get; }

    /// <summary>Which part of the model this rank holds, and how many bytes of weights that is.</summary>
    public ModelShard Shard => new(
        _partition.PipelineStage,
        _partition.PipelineStages,
        _partition.TensorRank,
        _partition.TensorSize,
        _partition.Layers,
        WeightBytesHeld);

    /// <summary>
    /// Whether a one-token step of a single sequence runs the backend's fused decode step (<see cref="IFusedDecodeBackend"/>),
    /// recorded once and replayed at every position, instead of one backend call per operation. On by default where the
    /// backend offers it and the model qualifies (the whole model on one device, dense SwiGLU layers with unquantized
    /// q/k/v/gate/up); false elsewhere. Turning it off runs the plain path (results agree to f32 rounding); turning it
    /// on where it is not available throws <see cref="InvalidOperationException"/>.
    /// </summary>
    public bool FusedDecode
    {
        get => _fusedDecode;
        set
        {
            if (value && _fusedDecodeStep is null)
            {
                throw new InvalidOperationException(
                    $"The fused decode step needs a backend that offers it (this one is '{Backend.Name}'), the whole model on it and dense, unquantized layers.");
            }

            _fusedDecode = value;
        }
    }

    /// <summary>Why recording the fused decode step failed, so that it runs eagerly; null while recording works (or is not used).</summary>
    public string? FusedDecodeRecordingFailure => _fusedDecodeStep?.RecordingFailure;

    /// <summary>Time spent in collectives and pipeline transfers since load, for splitting a step into compute and communication.</summary>
    public TimeSpan CommunicationTime => _partition.CommunicationTime;

    /// <summary>Bytes of weights this rank holds (the whole embedding table when it holds one; every held expert).</summary>
    public long WeightBytesHeld =>
        (Embedding?.WeightBytes ?? 0)
        + Layers.Sum(l => l.WeightBytesHeld)
        + (FinalNorm?.ByteLength ?? 0)
        + (ReferenceEquals(OutputHead, Embedding) ? 0 : OutputHead?.WeightBytes ?? 0);

    /// <summary>
    /// Bytes of weights one decoded token reads: one embedding row, every layer (only the routed experts of a
    /// mixture), the final norm and the whole output head. The memory-bandwidth roofline of decode.
    /// </summary>
    public long WeightBytes =>
        ((Embedding?.WeightBytes ?? 0) / Config.VocabularySize)
        + Layers.Sum(l => l.WeightBytesPerToken)
        + (FinalNorm?.ByteLength ?? 0)
        + (OutputHead?.WeightBytes ?? 0);

    /// <summary>Maps the weights of <paramref name="checkpoint"/>, which the model then owns and disposes.</summary>
    internal static CausalLanguageModel Create(
        ModelConfig config, SafetensorsCheckpoint checkpoint, IComputeBackend backend, ModelLoadOptions options, string configPath) =>
        Create(config, checkpoint, backend, options, configPath, ModelPartition.Whole(config));

    /// <summary>
    /// Maps the part of the checkpoint that <paramref name="partition"/> gives this rank: the embedding on the first
    /// pipeline stage, its layers (its heads, MLP features and experts of each), and the final norm and its run of the
    /// output head on the last stage. The model owns and disposes the checkpoint, not the partition's groups.
    /// </summary>
    internal static CausalLanguageModel Create(
        ModelConfig config, SafetensorsCheckpoint checkpoint, IComputeBackend backend, ModelLoadOptions options, string configPath, ModelPartition partition)
    {
        var weights = new WeightLoader(checkpoint, backend, config.Quantization, configPath);
        var loaded = new List<IDisposable> { checkpoint };

        // q|k|v and gate|up are held stacked (not also apart) only where the fused decode step will read them.
        var stack = FusedDecodeStep.Wants(backend, config, partition) && config.Quantization is null ? backend : null;
        try
        {
            var (vocabulary, hidden) = (config.VocabularySize, config.HiddenSize);
            var embedding = partition.IsFirstStage ? loaded.Keep(weights.Linear("model.embed_tokens", vocabulary, hidden, hasBias: false)) : null;
            var layers = new DecoderLayer[partition.Layers.Count];
            for (var i = 0; i < layers.Length; i++)
            {
                layers[i] = loaded.Keep(DecoderLayer.Load(weights, config, partition.Layers.Start + i, partition, stack));
            }

            Tensor? finalNorm = null;
            LinearWeight? outputHead = null;
            if (partition.IsLastStage)
            {
                finalNorm = loaded.Keep(weights.Vector("model.norm.weight", hidden));
                var headSlice = partition.TensorSize == 1 ? LinearSlice.Whole : LinearSlice.Outputs(partition.Vocabulary);

                // Tied checkpoints may still carry lm_head.weight; transformers ignores it in favour of the embedding.
                outputHead = config.TieWordEmbeddings && embedding is not null && partition.TensorSize == 1
                    ? embedding
                    : loaded.Keep(weights.Linear(config.TieWordEmbeddings ? "model.embed_tokens" : "lm_head", vocabulary, hidden, hasBias: false, headSlice));
            }

            var inverseFrequencies = Upload(backend, config.Rope.ComputeInverseFrequencies(config.HeadDim));
            return new CausalLanguageModel(
                config, backend, checkpoint, partition, embedding, layers, finalNorm, outputHead, inverseFrequencies, options.PrefillChunkSize);
        }
        catch
        {
            loaded.Reverse();
            loaded.ForEach(d => d.Dispose());
            throw;
        }
    }

    /// <summary>A cache for one sequence of up to <paramref name="capacity"/> tokens.</summary>
    public KvCache CreateCache(int capacity)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return new KvCache(this, Backend, Config, _partition, _inverseFrequencies, capacity);
    }

    /// <summary>
    /// Runs <paramref name="ids"/> at positions cache.Length .. cache.Length+n-1, appends their keys and values,
    /// advances cache.Length and writes the logits of the last position into <paramref name="lastLogits"/> (length vocab).
    /// On a sharded model every rank calls this with the same ids and every rank gets the same logits: tensor-parallel
    /// ranks gather their vocabulary runs, and the last pipeline stage broadcasts them to the earlier ones.
    /// </summary>
    public void Forward(ReadOnlySpan<int> ids, KvCache cache, Span<float> lastLogits)
    {
        lock (_forwardLock)
        {
            // The ids are held for the passes in a buffer of the model, since a batch entry holds memory, not a span.
            if (_singleIds.Length < ids.Length)
            {
                _singleIds = new int[Math.Max(ids.Length, _singleIds.Length * 2)];
            }

            ids.CopyTo(_singleIds);
            ForwardBatch([new BatchedSequence(cache, _singleIds.AsMemory(0, ids.Length))], lastLogits);
        }
    }

    /// <summary>
    /// One forward pass over several sequences, each with its own cache and its own new tokens (one for a decode step,
    /// a chunk for prefill): every matmul runs over the rows of all of them together, so the weights are read once per
    /// step, while rope, the cache writes and attention run per sequence. Writes the logits of each sequence's last
    /// position into row i of <paramref name="logits"/> ([batch.Length * vocab]; rows of sequences that do not need
    /// logits are left as they are). Rows beyond the activation scratch are run in several passes. On a sharded model
    /// every rank calls this with the same batch and gets the same logits; under pipeline parallelism the batch is cut
    /// into micro-batches so the stages work on them at the same time.
    /// </summary>
    public void ForwardBatch(ReadOnlySpan<BatchedSequence> batch, Span<float> logits)
    {
        var vocabulary = Config.VocabularySize;
        if (logits.Length != (long)batch.Length * vocabulary)
        {
            throw new ArgumentException(
                $"Logits buffer holds {logits.Length} values; {batch.Length} sequences of a {vocabulary}-token vocabulary need {(long)batch.Length * vocabulary}.",
                nameof(logits));
        }

        lock (_forwardLock)
        {
            var scratch = PrepareBatch(batch);
            if (TryFusedDecode(batch, logits))
            {
                return;
            }

            RunBatch(scratch, batch, logits);
            _partition.BroadcastFromLastStage(logits);
        }
    }

    /// <summary>
    /// The same pass as <see cref="ForwardBatch(ReadOnlySpan{BatchedSequence}, Span{float})"/>, ending in token ids
    /// instead of logits: <paramref name="sampler"/> picks the next token of each sequence that needs logits and
    /// <paramref name="tokens"/>[i] gets it (<see cref="Generation.GeneratedToken.NoToken"/> for the others). Under
    /// pipeline parallelism only the last stage has logits and samples; it sends just the ids back, so every stage ends
    /// the step with the same tokens.
    /// </summary>
    public void ForwardBatch(ReadOnlySpan<BatchedSequence> batch, BatchTokenSampler sampler, Span<int> tokens)
    {
        ArgumentNullException.ThrowIfNull(sampler);
        if (tokens.Length != batch.Length)
        {
            throw new ArgumentException($"Token buffer holds {tokens.Length} ids for {batch.Length} sequences.", nameof(tokens));
        }

        var vocabulary = Config.VocabularySize;
        lock (_forwardLock)
        {
            var scratch = PrepareBatch(batch);
            if (_batchLogits.Length < batch.Length * vocabulary)
            {
                _batchLogits = new float[batch.Length * vocabulary];
            }

            var logits = _batchLogits.AsSpan(0, batch.Length * vocabulary);
            if (!TryFusedDecode(batch, logits))
            {
                RunBatch(scratch, batch, logits);
            }

            tokens.Fill(Generation.GeneratedToken.NoToken);
            if (_partition.IsLastStage)
            {
                for (var i = 0; i < batch.Length; i++)
                {
                    if (batch[i].NeedsLogits)
                    {
                        tokens[i] = sampler(i, logits.Slice(i * vocabulary, vocabulary));
                    }
                }
            }

            _partition.BroadcastFromLastStage(tokens);
        }
    }

    /// <summary>The same as <see cref="Forward"/>, returning the logits of every position, [n * vocab].</summary>
    public float[] ForwardAllPositions(ReadOnlySpan<int> ids, KvCache cache)
    {
        var vocabulary = Config.VocabularySize;
        if ((long)ids.Length * vocabulary > Array.MaxLength)
        {
            throw new ArgumentException($"{ids.Length} positions of {vocabulary} logits do not fit in one array.", nameof(ids));
        }

        lock (_forwardLock)
        {
            var all = ids.ToArray();
            var scratch = PrepareBatch([new BatchedSequence(cache, all)]);
            var logits = new float[ids.Length * vocabulary];
            for (var offset = 0; offset < ids.Length; offset += scratch.Rows)
            {
                var n = Math.Min(scratch.Rows, ids.Length - offset);
                _segments.Clear();
                _segments.Add(new PassSegment(0, cache, all.AsMemory(offset, n), 0, WantsLogits: false));
                var (step, current) = RunPass(scratch, _segments, n, []);
                if (_partition.IsLastStage)
                {
                    Backend.RmsNorm(step.Hidden[current], FinalNorm!, Config.RmsNormEpsilon, step.Normed);
                    using var chunkLogits = Backend.Allocate(Backend.ActivationDType, n, _partition.Vocabulary.Count);
                    Backend.Linear(step.Normed, OutputHead!, chunkLogits);
                    GatherLogits(chunkLogits, logits.AsSpan(offset * vocabulary, n * vocabulary));
                }
            }

            _partition.BroadcastFromLastStage(logits.AsSpan());

            return logits;
        }
    }

    public void Dispose()
    {
        lock (_forwardLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            _scratch?.Dispose();
            _fusedDecodeStep?.Dispose();
            _inverseFrequencies.Dispose();
            if (!ReferenceEquals(OutputHead, Embedding))
            {
                OutputHead?.Dispose();
            }

            Embedding?.Dispose();
            foreach (var layer in Layers)
            {
                layer.Dispose();
            }

            FinalNorm?.Dispose();

            // Unmapped last: on the CPU backend the weights above point into the mapping.
            _checkpoint?.Dispose();
        }
    }

    private ForwardScratch PrepareBatch(ReadOnlySpan<BatchedSequence> batch)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (batch.IsEmpty)
        {
            throw new ArgumentException("The batch holds no sequences.", nameof(batch));
        }

        for (var i = 0; i < batch.Length; i++)
        {
            var cache = batch[i].Cache;
            var ids = batch[i].Ids.Span;
            ArgumentNullException.ThrowIfNull(cache, nameof(batch));
            if (!ReferenceEquals(cache.Owner, this))
            {
                throw new ArgumentException("The cache was created by another model.", nameof(batch));
            }

            for (var j = 0; j < i; j++)
            {
                if (ReferenceEquals(batch[j].Cache, cache))
                {
                    throw new ArgumentException($"Sequences {j} and {i} of the batch share one cache.", nameof(batch));
                }
            }

            if (ids.IsEmpty)
            {
                throw new ArgumentException("At least one token is needed.", nameof(batch));
            }

            if (ids.Length > cache.Capacity - cache.Length)
            {
                throw new InvalidOperationException(
                    $"The cache holds {cache.Length} of {cache.Capacity} tokens and cannot take {ids.Length} more; create a larger cache.");
            }

            foreach (var id in ids)
            {
                if ((uint)id >= (uint)Config.VocabularySize)
                {
                    throw new ArgumentOutOfRangeException(nameof(batch), id, $"Token id outside the vocabulary [0, {Config.VocabularySize}).");
                }
            }
        }

        if (_scratch is null)
        {
            _scratch = new ForwardScratch(Backend, Config, _partition, _prefillChunkSize);
            _passIds = new int[_scratch.Rows];
            _passPositions = new int[_scratch.Rows];
        }

        return _scratch;
    }

    /// <summary>
    /// A one-token step of a single sequence that wants its logits, through the fused decode step when it is on; false
    /// (nothing done) otherwise. The fused step only runs unsharded, so there is nothing to broadcast.
    /// </summary>
    private bool TryFusedDecode(ReadOnlySpan<BatchedSequence> batch, Span<float> logits)
    {
        if (!_fusedDecode || batch.Length != 1 || batch[0].Ids.Length != 1 || !batch[0].NeedsLogits)
        {
            return false;
        }

        _fusedDecodeStep!.Run(batch[0].Ids.Span[0], batch[0].Cache, logits);
        return true;
    }

    /// <summary>
    /// Packs the batch's tokens into passes of at most scratch.Rows rows (a long prompt spills into the next pass) and
    /// runs them; the logits of each sequence that needs them land in its row of <paramref name="logits"/> on the last
    /// stage. Under pipeline parallelism the sequences are first cut into up to one micro-batch per stage: a stage hands
    /// one micro-batch on and starts the next while the later stages work on it.
    /// </summary>
    private void RunBatch(ForwardScratch scratch, ReadOnlySpan<BatchedSequence> batch, Span<float> logits)
    {
        var microBatches = Math.Min(_partition.PipelineStages, batch.Length);
        var segments = _segments;
        segments.Clear();
        var rows = 0;
        for (var microBatch = 0; microBatch < microBatches; microBatch++)
        {
            var (first, end) = (batch.Length * microBatch / microBatches, batch.Length * (microBatch + 1) / microBatches);
            for (var i = first; i < end; i++)
            {
                var ids = batch[i].Ids;
                for (var offset = 0; offset < ids.Length;)
                {
                    var take = Math.Min(scratch.Rows - rows, ids.Length - offset);
                    var last = offset + take == ids.Length;
                    segments.Add(new PassSegment(i, batch[i].Cache, ids.Slice(offset, take), rows, batch[i].NeedsLogits && last));
                    (rows, offset) = (rows + take, offset + take);
                    if (rows == scratch.Rows)
                    {
                        RunPass(scratch, segments, rows, logits);
                        segments.Clear();
                        rows = 0;
                    }
                }
            }

            if (rows > 0)
            {
                RunPass(scratch, segments, rows, logits);
                segments.Clear();
                rows = 0;
            }
        }
    }

    /// <summary>
    /// One pass over <paramref name="rows"/> rows laid out by <paramref name="segments"/>: embeds (or receives) them,
    /// runs this rank's layers, hands them on (or, on the last stage, computes the logits the segments want into their
    /// sequences' rows of <paramref name="logits"/>) and advances every segment's cache.
    /// </summary>
    private ForwardChunk RunPass(ForwardScratch scratch, List<PassSegment> segments, int rows, Span<float> logits)
    {
        var step = scratch.For(rows);
        var current = 0;
        if (_partition.IsFirstStage)
        {
            foreach (var segment in segments)
            {
                segment.Ids.Span.CopyTo(_passIds.AsSpan(segment.Row));
            }

            using var idTensor = Backend.Upload(MemoryMarshal.AsBytes(_passIds.AsSpan(0, rows)), DType.I32, rows);
            Backend.Embedding(Embedding!, idTensor, step.Hidden[current]);
        }
        else
        {
            _partition.ReceiveFromPreviousStage(step.Hidden[current]);
        }

        using (var pass = new PassLayout(Backend, step, segments, _passPositions, _inverseFrequencies))
        {
            foreach (var layer in Layers)
            {
                layer.Forward(Backend, step, ref current, pass);
            }
        }

        // While the next stage runs this pass, this one moves on to the next (a prompt's next chunk, the next micro-batch).
        if (!_partition.IsLastStage)
        {
            _partition.SendToNextStage(step.Hidden[current]);
        }

        foreach (var segment in segments)
        {
            segment.Cache.Advance(segment.Count);
        }

        if (_partition.IsLastStage)
        {
            ComputeWantedLogits(scratch, step.Hidden[current], segments, logits);
        }

        return new ForwardChunk(step, current);
    }

    /// <summary>
    /// Final norm and output head on the last row of each segment that wants logits, a few rows at a time: the rows
    /// are gathered into the head's input buffer so lm_head reads its weights once for all of them.
    /// </summary>
    private void ComputeWantedLogits(ForwardScratch scratch, Tensor hidden, List<PassSegment> segments, Span<float> logits)
    {
        var vocabulary = Config.VocabularySize;
        var index = 0;
        while (true)
        {
            var count = 0;
            for (; index < segments.Count && count < scratch.HeadRows; index++)
            {
                var segment = segments[index];
                if (segment.WantsLogits)
                {
                    Backend.Copy(hidden.Slice(segment.Row + segment.Count - 1, 1), scratch.HeadInput.Slice(count, 1));
                    _headSequences[count++] = segment.Sequence;
                }
            }

            if (count == 0)
            {
                return;
            }

            var normed = scratch.HeadNormed.Slice(0, count);
            var head = scratch.HeadLogits.Slice(0, count);
            Backend.RmsNorm(scratch.HeadInput.Slice(0, count), FinalNorm!, Config.RmsNormEpsilon, normed);
            Backend.Linear(normed, OutputHead!, head);
            if (count == 1)
            {
                GatherLogits(head, logits.Slice(_headSequences[0] * vocabulary, vocabulary));
                continue;
            }

            var staging = EnsureLength(ref _headStaging, count * vocabulary);
            GatherLogits(head, staging);
            for (var j = 0; j < count; j++)
            {
                staging.Slice(j * vocabulary, vocabulary).CopyTo(logits.Slice(_headSequences[j] * vocabulary, vocabulary));
            }
        }
    }

    /// <summary>
    /// Logits [rows, vocab] into <paramref name="destination"/> from this rank's run [rows, run]: under tensor
    /// parallelism the runs of all ranks are gathered (each padded to the same length) and put side by side.
    /// </summary>
    private void GatherLogits(Tensor local, Span<float> destination)
    {
        if (_partition.TensorSize == 1)
        {
            DownloadFloats(local, destination);
            return;
        }

        var rows = checked((int)local.Rows);
        var (chunk, vocabulary) = (_partition.VocabularyChunk, Config.VocabularySize);
        var run = local.Columns;
        var padded = EnsureLength(ref _paddedRuns, rows * chunk);
        if (run == chunk || rows == 1)
        {
            // Runs of the padded length (or a single row) download straight into place; padding is never read.
            DownloadFloats(local, padded[..(rows * run)]);
        }
        else
        {
            var runs = EnsureLength(ref _localRuns, rows * run);
            DownloadFloats(local, runs);
            for (var row = 0; row < rows; row++)
            {
                runs.Slice(row * run, run).CopyTo(padded.Slice(row * chunk));
            }
        }

        var gathered = EnsureLength(ref _gatheredRuns, padded.Length * _partition.TensorSize);
        _partition.AllGather(padded, gathered);
        for (var rank = 0; rank < _partition.TensorSize; rank++)
        {
            var start = rank * chunk;
            var length = Math.Min(chunk, vocabulary - start);
            for (var row = 0; row < rows; row++)
            {
                gathered.Slice((rank * padded.Length) + (row * chunk), length).CopyTo(destination.Slice((row * vocabulary) + start));
            }
        }
    }

    /// <summary>The first <paramref name="length"/> values of a buffer that only grows, so steady decode allocates nothing.</summary>
    private static Span<float> EnsureLength(ref float[] buffer, int length)
    {
        if (buffer.Length < length)
        {
            buffer = new float[Math.Max(length, buffer.Length * 2)];
        }

        return buffer.AsSpan(0, length);
    }

    private void DownloadFloats(Tensor source, Span<float> destination)
    {
        switch (source.DType)
        {
            case DType.F32:
                Backend.Download(source, MemoryMarshal.AsBytes(destination));
                break;
            case DType.F16:
                var halves = new Half[destination.Length];
                Backend.Download(source, MemoryMarshal.AsBytes(halves.AsSpan()));
                for (var i = 0; i < halves.Length; i++)
                {
                    destination[i] = (float)halves[i];
                }

                break;
            case DType.BF16:
                var raw = new ushort[destination.Length];
                Backend.Download(source, MemoryMarshal.AsBytes(raw.AsSpan()));
                for (var i = 0; i < raw.Length; i++)
                {
                    destination[i] = BitConverter.Int32BitsToSingle(raw[i] << 16);
                }

                break;
            default:
                throw new NotSupportedException($"Activation dtype {source.DType} cannot be read back as logits.");
        }
    }

    private static Tensor Upload(IComputeBackend backend, float[] values) =>
        backend.Upload(MemoryMarshal.AsBytes(values.AsSpan()), DType.F32, values.Length);

    private readonly record struct ForwardChunk(ForwardScratch.StepTensors Step, int Current);
}
