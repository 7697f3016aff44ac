using System.Runtime.InteropServices;
using Granary.Models.Configuration;
using Granary.Tensors;

namespace Granary.Models;

/// <summary>
/// Keys and values of every layer for one sequence, [capacity, kvHeads, headDim] per layer on the model's backend.
/// The capacity is fixed: a forward pass that would run past it throws rather than reallocating, so memory use is
/// decided up front. <see cref="Truncate"/> keeps a prefix for prompt-cache reuse.
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor[] _keys;
    private readonly Tensor[] _values;
    private bool _disposed;

    internal KvCache(CausalLanguageModel owner, IComputeBackend backend, ModelConfig config, Tensor inverseFrequencies, int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(capacity);
        Owner = owner;
        Capacity = capacity;
        InverseFrequencies = inverseFrequencies;
        _keys = new Tensor[config.LayerCount];
        _values = new Tensor[config.LayerCount];
        try
        {
            for (var layer = 0; layer < config.LayerCount; layer++)
            {
                _keys[layer] = backend.Allocate(backend.ActivationDType, capacity, config.KeyValueHeadCount, config.HeadDim);
                _values[layer] = backend.Allocate(backend.ActivationDType, capacity, config.KeyValueHeadCount, config.HeadDim);
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

    internal IReadOnlyList<Tensor> Keys => _keys;

    internal IReadOnlyList<Tensor> Values => _values;

    internal Tensor Positions { get; } = null!;

    internal Tensor InverseFrequencies { get; }

    public void Reset() => Truncate(0);

    /// <summary>Forgets every token from <paramref name="length"/> on.</summary>
    public void Truncate(int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(length, Length);
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
        foreach (var tensor in _keys.Concat(_values))
        {
            tensor?.Dispose();
        }

        Positions?.Dispose();
    }
}
