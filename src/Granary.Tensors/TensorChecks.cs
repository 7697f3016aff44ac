namespace Granary.Tensors;

/// <summary>
/// Argument checks every backend makes the same way: dtypes and buffer kinds (each backend passes its own buffer type and
/// pointers) and the shape contract of each operation of <see cref="IComputeBackend"/>, so all backends accept and refuse
/// the same calls with the same messages.
/// </summary>
internal static class TensorChecks
{
    /// <summary>Throws unless <paramref name="t"/> has <paramref name="dtype"/> and lives in a <typeparamref name="TBuffer"/>.</summary>
    public static void RequireDType<TBuffer>(Tensor t, DType dtype, string name, string backend)
        where TBuffer : class
    {
        ArgumentNullException.ThrowIfNull(t, name);
        if (t.DType != dtype)
        {
            throw new ArgumentException($"{name} must be {dtype}, got {t}.", name);
        }

        if (t.Buffer is not TBuffer)
        {
            throw new ArgumentException($"{name} {t} is not a {backend} tensor.", name);
        }
    }

    public static void RequireSameShape(Tensor a, Tensor b)
    {
        if (a.ElementCount != b.ElementCount || a.Columns != b.Columns)
        {
            throw new ArgumentException($"Shapes differ: {a} and {b}.");
        }
    }

    /// <summary>Throws when the bytes of <paramref name="a"/> (from <paramref name="startA"/>) and <paramref name="b"/> overlap.</summary>
    public static void RequireDisjoint(Tensor a, ulong startA, Tensor b, ulong startB)
    {
        if (startA < startB + (ulong)b.ByteLength && startB < startA + (ulong)a.ByteLength)
        {
            throw new ArgumentException($"{a} and {b} overlap; this operation cannot run in place.");
        }
    }

    public static void RequireQuantizedScales(QuantizedWeight weight)
    {
        if (!weight.Scales.DType.IsFloatingPoint() || weight.Biases.DType != weight.Scales.DType)
        {
            throw new ArgumentException($"Quantized scales {weight.Scales} and biases {weight.Biases} must share one floating-point dtype.");
        }
    }

    public static void CopyShapes(Tensor source, Tensor destination)
    {
        if (source.DType != destination.DType || source.ElementCount != destination.ElementCount)
        {
            throw new ArgumentException($"Copy from {source} to {destination}: dtype and element count must match.");
        }
    }

    public static void EmbeddingShapes(LinearWeight table, Tensor ids, Tensor output)
    {
        if (output.Columns != table.InFeatures || output.Rows != ids.ElementCount)
        {
            throw new ArgumentException($"Embedding output {output} must be [{ids.ElementCount}, {table.InFeatures}] for ids {ids} and a table of width {table.InFeatures}.");
        }
    }

    /// <summary>Throws unless there is one output per weight.</summary>
    public static void LinearsCount(ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        if (weights.Length != outputs.Length)
        {
            throw new ArgumentException($"{weights.Length} weights need as many outputs, got {outputs.Length}.", nameof(outputs));
        }
    }

    public static void LinearShapes(Tensor input, LinearWeight weight, Tensor output)
    {
        if (input.Columns != weight.InFeatures || output.Columns != weight.OutFeatures || input.Rows != output.Rows)
        {
            throw new ArgumentException(
                $"Linear [{weight.OutFeatures}, {weight.InFeatures}] needs input [n, {weight.InFeatures}] and output [n, {weight.OutFeatures}], got {input} and {output}.");
        }
    }

    public static void RopeShapes(Tensor x, Tensor positions, Tensor inverseFrequency)
    {
        if (x.Rank != 3 || x.Dim(2) % 2 != 0 || positions.ElementCount != x.Dim(0) || inverseFrequency.ElementCount != x.Dim(2) / 2)
        {
            throw new ArgumentException(
                $"Rope needs x [n, heads, even headDim], positions [n] and inverse frequencies [headDim/2]; got {x}, {positions}, {inverseFrequency}.");
        }
    }

    /// <summary>Checks query [n, heads, headDim], caches [capacity, kvHeads, headDim] and the positions; returns the sizes.</summary>
    public static (int N, int Heads, int HeadDim, int KvHeads) AttentionShapes(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, Tensor output)
    {
        if (query.Rank != 3 || keyCache.Rank != 3 || !keyCache.Shape.AsSpan().SequenceEqual(valueCache.Shape))
        {
            throw new ArgumentException($"Attention needs query [n, heads, headDim] and equal caches [capacity, kvHeads, headDim]; got {query}, {keyCache}, {valueCache}.");
        }

        RequireSameShape(query, output);
        var (n, heads, headDim) = (query.Dim(0), query.Dim(1), query.Dim(2));
        var (capacity, kvHeads) = (keyCache.Dim(0), keyCache.Dim(1));
        if (keyCache.Dim(2) != headDim || kvHeads == 0 || heads % kvHeads != 0)
        {
            throw new ArgumentException($"Query {query} and caches {keyCache}: head dims must match and heads must be a multiple of kv heads.");
        }

        if (startPosition < 0 || (long)startPosition + n > capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(startPosition), startPosition, $"Positions [{startPosition}, {(long)startPosition + n}) do not fit the cache {keyCache}.");
        }

        return (n, heads, headDim, kvHeads);
    }

    /// <summary>Router logits [tokens, experts], k in [1, experts], and indices and weights [tokens, k].</summary>
    public static void RoutingShapes(Tensor routerLogits, int k, Tensor indices, Tensor weights)
    {
        var (tokens, experts) = (routerLogits.Rows, routerLogits.Columns);
        if (k < 1 || k > experts)
        {
            throw new ArgumentOutOfRangeException(nameof(k), k, $"k must be in [1, {experts}] for router logits {routerLogits}.");
        }

        if (indices.Columns != k || indices.Rows != tokens || weights.Columns != k || weights.Rows != tokens)
        {
            throw new ArgumentException($"Routing outputs must be [{tokens}, {k}]; got indices {indices} and weights {weights}.");
        }
    }

    /// <summary>An element-wise a (op) b into output: b has a's shape or is one row broadcast over a's rows; returns whether it is.</summary>
    public static bool BinaryShapes(Tensor a, Tensor b, Tensor output)
    {
        RequireSameShape(a, output);
        var broadcast = b.ElementCount != a.ElementCount;
        if (broadcast && (b.ElementCount != a.Columns || b.Columns != a.Columns))
        {
            throw new ArgumentException($"Operand {b} must have the shape of {a} or be one row of {a.Columns} elements.", nameof(b));
        }

        return broadcast;
    }
}
