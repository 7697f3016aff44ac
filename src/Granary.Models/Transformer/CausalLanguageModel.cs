using System.Runtime.InteropServices;
using Granary.Models.Configuration;
using Granary.Models.Safetensors;
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
    private readonly Tensor _inverseFrequencies;
    private readonly int _prefillChunkSize;
    private readonly Lock _forwardLock = new();
    private ForwardScratch? _scratch;
    private bool _disposed;

    private CausalLanguageModel(
        ModelConfig config,
        IComputeBackend backend,
        SafetensorsCheckpoint? checkpoint,
        LinearWeight embedding,
        IReadOnlyList<DecoderLayer> layers,
        Tensor finalNorm,
        LinearWeight outputHead,
        Tensor inverseFrequencies,
        int prefillChunkSize)
    {
        Config = config;
        Backend = backend;
        _checkpoint = checkpoint;
        Embedding = embedding;
        Layers = layers;
        FinalNorm = finalNorm;
        OutputHead = outputHead;
        _inverseFrequencies = inverseFrequencies;
        _prefillChunkSize = prefillChunkSize;
    }

    public ModelConfig Config { get; }

    public IComputeBackend Backend { get; }

    /// <summary>model.embed_tokens; also the output head when embeddings are tied.</summary>
    public LinearWeight Embedding { get; }

    public IReadOnlyList<DecoderLayer> Layers { get; }

    public Tensor FinalNorm { get; }

    /// <summary>lm_head (the embedding itself when tied).</summary>
    public LinearWeight OutputHead { get; }

    /// <summary>
    /// Bytes of weights one decoded token reads: one embedding row, every layer (only the routed experts of a
    /// mixture), the final norm and the whole output head. The memory-bandwidth roofline of decode.
    /// </summary>
    public long WeightBytes =>
        (Embedding.WeightBytes / Config.VocabularySize)
        + Layers.Sum(l => l.WeightBytesPerToken)
        + FinalNorm.ByteLength
        + OutputHead.WeightBytes;

    /// <summary>Maps the weights of <paramref name="checkpoint"/>, which the model then owns and disposes.</summary>
    internal static CausalLanguageModel Create(
        ModelConfig config, SafetensorsCheckpoint checkpoint, IComputeBackend backend, ModelLoadOptions options, string configPath)
    {
        var weights = new WeightLoader(checkpoint, backend, config.Quantization, configPath);
        var loaded = new List<IDisposable> { checkpoint };
        try
        {
            var embedding = loaded.Keep(weights.Linear("model.embed_tokens", config.VocabularySize, config.HiddenSize, hasBias: false));
            var layers = new DecoderLayer[config.LayerCount];
            for (var i = 0; i < layers.Length; i++)
            {
                layers[i] = loaded.Keep(DecoderLayer.Load(weights, config, i));
            }

            var finalNorm = loaded.Keep(weights.Vector("model.norm.weight", config.HiddenSize));

            // Tied checkpoints may still carry lm_head.weight; transformers ignores it in favour of the embedding.
            var outputHead = config.TieWordEmbeddings
                ? embedding
                : loaded.Keep(weights.Linear("lm_head", config.VocabularySize, config.HiddenSize, hasBias: false));
            var inverseFrequencies = Upload(backend, config.Rope.ComputeInverseFrequencies(config.HeadDim));
            return new CausalLanguageModel(config, backend, checkpoint, embedding, layers, finalNorm, outputHead, inverseFrequencies, options.PrefillChunkSize);
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
        return new KvCache(this, Backend, Config, _inverseFrequencies, capacity);
    }

    /// <summary>
    /// Runs <paramref name="ids"/> at positions cache.Length .. cache.Length+n-1, appends their keys and values,
    /// advances cache.Length and writes the logits of the last position into <paramref name="lastLogits"/> (length vocab).
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

            var (step, current) = last!.Value;
            Backend.RmsNorm(step.LastHidden[current], FinalNorm, Config.RmsNormEpsilon, scratch.LastNormed);
            Backend.Linear(scratch.LastNormed, OutputHead, scratch.LastLogits);
            DownloadFloats(scratch.LastLogits, lastLogits);
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
                Backend.RmsNorm(step.Hidden[current], FinalNorm, Config.RmsNormEpsilon, step.Normed);
                using var chunkLogits = Backend.Allocate(Backend.ActivationDType, n, vocabulary);
                Backend.Linear(step.Normed, OutputHead, chunkLogits);
                DownloadFloats(chunkLogits, logits.AsSpan(offset * vocabulary, n * vocabulary));
            }

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
                OutputHead.Dispose();
            }

            Embedding.Dispose();
            foreach (var layer in Layers)
            {
                layer.Dispose();
            }

            FinalNorm.Dispose();

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

        return _scratch ??= new ForwardScratch(Backend, Config, _prefillChunkSize);
    }

    private ForwardChunk RunChunk(ForwardScratch scratch, ReadOnlySpan<int> ids, KvCache cache)
    {
        var step = scratch.For(ids.Length);
        var current = 0;
        using (var idTensor = Backend.Upload(MemoryMarshal.AsBytes(ids), DType.I32, ids.Length))
        {
            Backend.Embedding(Embedding, idTensor, step.Hidden[current]);
        }

        var positions = cache.Positions.Slice(cache.Length, ids.Length);
        foreach (var layer in Layers)
        {
            layer.Forward(Backend, step, ref current, cache, positions);
        }

        cache.Advance(ids.Length);
        return new ForwardChunk(step, current);
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
