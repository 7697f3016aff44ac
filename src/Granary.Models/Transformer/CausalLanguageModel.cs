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

    // Host buffers for gathering the vocabulary runs of the tensor-parallel ranks: one padded run each.
    private readonly float[] _localLogits;
    private readonly float[] _gatheredLogits;
    private readonly Tensor _inverseFrequencies;
    private readonly int _prefillChunkSize;
    private readonly Lock _forwardLock = new();
    private ForwardScratch? _scratch;
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
        _localLogits = partition.TensorSize == 1 ? [] : new float[partition.VocabularyChunk];
        _gatheredLogits = partition.TensorSize == 1 ? [] : new float[partition.VocabularyChunk * partition.TensorSize];
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        OutputHead = outputHead;
        _inverseFrequencies = inverseFrequencies;
        _prefillChunkSize = prefillChunkSize;
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
        try
        {
            var (vocabulary, hidden) = (config.VocabularySize, config.HiddenSize);
            var embedding = partition.IsFirstStage ? loaded.Keep(weights.Linear("model.embed_tokens", vocabulary, hidden, hasBias: false)) : null;
            var layers = new DecoderLayer[partition.Layers.Count];
            for (var i = 0; i < layers.Length; i++)
            {
                layers[i] = loaded.Keep(DecoderLayer.Load(weights, config, partition.Layers.Start + i, partition));
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
        if (lastLogits.Length != Config.VocabularySize)
        {
            throw new ArgumentException($"Logits buffer holds {lastLogits.Length} values; the vocabulary has {Config.VocabularySize}.", nameof(lastLogits));
        }

        lock (_forwardLock)
        {
            var scratch = PrepareForward(ids, cache);
            ForwardChunk? last = null;
            for (var offset = 0; offset < ids.Length; offset += scratch.Rows)
            {
                last = RunChunk(scratch, ids.Slice(offset, Math.Min(scratch.Rows, ids.Length - offset)), cache);
            }

            if (_partition.IsLastStage)
            {
                var (step, current) = last!.Value;
                Backend.RmsNorm(step.LastHidden[current], FinalNorm!, Config.RmsNormEpsilon, scratch.LastNormed);
                Backend.Linear(scratch.LastNormed, OutputHead!, scratch.LastLogits);
                GatherLogits(scratch.LastLogits, lastLogits);
            }

            _partition.BroadcastFromLastStage(lastLogits);
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
            var scratch = PrepareForward(ids, cache);
            var logits = new float[ids.Length * vocabulary];
            for (var offset = 0; offset < ids.Length; offset += scratch.Rows)
            {
                var n = Math.Min(scratch.Rows, ids.Length - offset);
                var (step, current) = RunChunk(scratch, ids.Slice(offset, n), cache);
                if (_partition.IsLastStage)
                {
                    Backend.RmsNorm(step.Hidden[current], FinalNorm!, Config.RmsNormEpsilon, step.Normed);
                    using var chunkLogits = Backend.Allocate(Backend.ActivationDType, n, _partition.Vocabulary.Count);
                    Backend.Linear(step.Normed, OutputHead!, chunkLogits);
                    GatherLogits(chunkLogits, logits.AsSpan(offset * vocabulary, n * vocabulary));
                }
            }

            _partition.BroadcastFromLastStage(logits);

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

    private ForwardScratch PrepareForward(ReadOnlySpan<int> ids, KvCache cache)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(cache);
        if (!ReferenceEquals(cache.Owner, this))
        {
            throw new ArgumentException("The cache was created by another model.", nameof(cache));
        }

        if (ids.IsEmpty)
        {
            throw new ArgumentException("At least one token is needed.", nameof(ids));
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
                throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id outside the vocabulary [0, {Config.VocabularySize}).");
            }
        }

        return _scratch ??= new ForwardScratch(Backend, Config, _partition, _prefillChunkSize);
    }

    private ForwardChunk RunChunk(ForwardScratch scratch, ReadOnlySpan<int> ids, KvCache cache)
    {
        var step = scratch.For(ids.Length);
        var current = 0;
        if (_partition.IsFirstStage)
        {
            using var idTensor = Backend.Upload(MemoryMarshal.AsBytes(ids), DType.I32, ids.Length);
            Backend.Embedding(Embedding!, idTensor, step.Hidden[current]);
        }
        else
        {
            _partition.ReceiveFromPreviousStage(step.Hidden[current]);
        }

        var positions = cache.Positions.Slice(cache.Length, ids.Length);
        foreach (var layer in Layers)
        {
            layer.Forward(Backend, step, ref current, cache, positions);
        }

        // While the next stage runs this chunk, this one moves on to the next chunk of the prompt.
        if (!_partition.IsLastStage)
        {
            _partition.SendToNextStage(step.Hidden[current]);
        }

        cache.Advance(ids.Length);
        return new ForwardChunk(step, current);
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
        if (rows == 1)
        {
            // Decode: the padded runs laid end to end are the vocabulary followed by padding, with no allocation.
            DownloadFloats(local, _localLogits.AsSpan(0, run));
            _partition.AllGather(_localLogits, _gatheredLogits);
            _gatheredLogits.AsSpan(0, vocabulary).CopyTo(destination);
            return;
        }

        var runs = new float[rows * run];
        DownloadFloats(local, runs);
        var padded = new float[rows * chunk];
        for (var row = 0; row < rows; row++)
        {
            runs.AsSpan(row * run, run).CopyTo(padded.AsSpan(row * chunk));
        }

        var gathered = new float[padded.Length * _partition.TensorSize];
        _partition.AllGather(padded, gathered);
        for (var rank = 0; rank < _partition.TensorSize; rank++)
        {
            var start = rank * chunk;
            var length = Math.Min(chunk, vocabulary - start);
            for (var row = 0; row < rows; row++)
            {
                gathered.AsSpan((rank * padded.Length) + (row * chunk), length).CopyTo(destination.Slice((row * vocabulary) + start));
            }
        }
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
