namespace Granary.Models.Sharding;

/// <summary>How <see cref="LinearSharding.ShardLinear"/> splits a linear layer y = x W^T over the ranks of a group.</summary>
public enum ShardStrategy
{
    /// <summary>
    /// Column split of the layer (rows of the stored [out, in] weight): every rank takes the whole input and computes
    /// its slice of the output features. No communication.
    /// </summary>
    AllToSharded,

    /// <summary>
    /// Row split of the layer (columns of the stored weight): every rank takes its slice of the input features and
    /// computes a partial output that the ranks add up with an all-sum. The bias is added by rank 0 only.
    /// </summary>
    ShardedToAll,
}
