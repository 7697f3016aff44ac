namespace Granary.Tensors;

/// <summary>Argument checks every backend makes the same way; each passes its own buffer type and pointers.</summary>
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
}
