namespace Granary.Collectives;

/// <summary>How contributions of the ranks combine element-wise.</summary>
public enum ReduceOp : byte
{
    Sum,
    Max,
    Min,
}
