namespace Granary.Tensors;

/// <summary>Element types a tensor can hold. Quantized weights are not a dtype: see <see cref="QuantizedWeight"/>.</summary>
public enum DType : byte
{
    F32,
    F16,
    BF16,
    I32,
    U32,
    U8,
    I64,
}

public static class DTypeExtensions
{
    public static int SizeInBytes(this DType dtype) => dtype switch
    {
        DType.F32 or DType.I32 or DType.U32 => 4,
        DType.F16 or DType.BF16 => 2,
        DType.U8 => 1,
        DType.I64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown dtype."),
    };

    public static bool IsFloatingPoint(this DType dtype) => dtype is DType.F32 or DType.F16 or DType.BF16;

    /// <summary>Parses a safetensors dtype string ("F32", "BF16", ...).</summary>
    public static bool TryParseSafetensors(string name, out DType dtype)
    {
        switch (name)
        {
            case "F32": dtype = DType.F32; return true;
            case "F16": dtype = DType.F16; return true;
            case "BF16": dtype = DType.BF16; return true;
            case "I32": dtype = DType.I32; return true;
            case "U32": dtype = DType.U32; return true;
            case "U8": dtype = DType.U8; return true;
            case "I64": dtype = DType.I64; return true;
            default: dtype = default; return false;
        }
    }

    public static string ToSafetensorsName(this DType dtype) => dtype.ToString().ToUpperInvariant();
}
