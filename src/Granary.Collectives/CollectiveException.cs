namespace Granary.Collectives;

/// <summary>
/// A collective operation or group formation failed: a peer died, stalled past the timeout, or sent something unexpected.
/// After this exception the group is unusable; dispose it and form a new one.
/// </summary>
public sealed class CollectiveException : Exception
{
    public CollectiveException(string message, int? peerRank = null, string? operation = null, Exception? innerException = null)
        : base(message, innerException)
    {
        PeerRank = peerRank;
        Operation = operation;
    }

    /// <summary>The rank (in the world group) that caused the failure, when known.</summary>
    public int? PeerRank { get; }

    /// <summary>The operation that was running ("AllSum", "Barrier", "Init", ...), when known.</summary>
    public string? Operation { get; }
}
