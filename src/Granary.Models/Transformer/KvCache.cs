using System.Runtime.InteropServices;
using Granary.Models.Configuration;
using Granary.Models.Sharding;
using Granary.Tensors;

namespace Granary.Models;

/// <summary>
/// Keys and values of every layer for one sequence, [capacity, kvHeads, headDim] per layer on the model's backend;
/// a rank of a sharded model caches only its layers and its key/value heads.
/// The capacity is fixed: a forward pass that would run past it throws rather than reallocating, so memory use is
/// decided up front. <see cref="Truncate"/> keeps a prefix for prompt-cache reuse.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;
    private bool _disposed;

    internal KvCache(CausalLanguageModel owner, IComputeBackend backend, ModelConfig config, ModelPartition partition, Tensor inverseFrequencies, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Owner = owner;
        Capacity = capacity;
        InverseFrequencies = inverseFrequencies;
        _keys = new Tensor?[config.LayerCount];
        _values = new Tensor?[config.LayerCount];
        try
        {
            var keyValueHeads = partition.KeyValueHeadCount;
            for (var layer = partition.Layers.Start; layer < partition.Layers.End; layer++)
            {
                _keys[layer] = backend.Allocate(backend.ActivationDType, capacity, keyValueHeads, config.HeadDim);
                _values[layer] = backend.Allocate(backend.ActivationDType, capacity, keyValueHeads, config.HeadDim);
            }

            var positions = new int[capacity];
            for (var i = 0; i < capacity; i++)
            {
                positions[i] = i;
            }

            // Position ids never change, so they are uploaded once and sliced per step.
            Positions = backend.Upload(MemoryMarshal.AsBytes(positions.AsSpan()), DType.I32, capacity);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Tokens held (the position of the next token).</summary>
    public int Length { get; private set; }

    public int Capacity { get; }

    internal CausalLanguageModel Owner { get; }

    /// <summary>Per layer index; null for layers another pipeline stage runs.</summary>
    internal IReadOnlyList<Tensor?> Keys => _keys;

    internal IReadOnlyList<Tensor?> Values => _values;

    internal Tensor Positions { get; } = null!;

    internal Tensor InverseFrequencies { get; }

    /// <summary>
    /// The fused decode step recorded against this cache's buffers, by attention position limit; a null entry marks a
    /// limit whose step has run eagerly once (see <see cref="FusedDecodeStep"/>).
    /// </summary>
    internal Dictionary<int, IRecordedStep?> DecodeRecordings { get; } = [];

    public void Reset() => Truncate(0);

    /// <summary>Forgets every token from <paramref name="length"/> on.</summary>
    public void Truncate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Length);
        Length = length;
    }

    /// <summary>
    /// Makes this cache hold the first <paramref name="length"/> tokens of <paramref name="source"/> (a prompt-cache
    /// hit whose cache is too small or still in use): their keys and values are copied on the backend.
    /// </summary>
    public void CopyFrom(KvCache source, int length)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(source);
        ObjectDisposedException.ThrowIf(source._disposed, source);
        if (!ReferenceEquals(source.Owner, Owner))
        {
            throw new ArgumentException("The source cache was created by another model.", nameof(source));
        }

        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, source.Length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Capacity);
        if (length > 0)
        {
            for (var layer = 0; layer < _keys.Length; layer++)
            {
                if (_keys[layer] is { } keys)
                {
                    Owner.Backend.Copy(source._keys[layer]!.Slice(0, length), keys.Slice(0, length));
                    Owner.Backend.Copy(source._values[layer]!.Slice(0, length), _values[layer]!.Slice(0, length));
                }
            }
        }

        Length = length;
    }

    internal void Advance(int count) => Length += count;

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        foreach (var recorded in DecodeRecordings.Values)
        {
            recorded?.Dispose();
        }

        DecodeRecordings.Clear();
        foreach (var tensor in _keys.Concat(_values))
        {
            tensor?.Dispose();
        }

        Positions?.Dispose();
    }
}
