namespace Granary.Collectives;

/// <summary>Environment variables through which `granary launch` tells each process its place in the group.</summary>
public static class DistributedEnvironment
{
    /// <summary>This process's rank, 0 ≤ rank &lt; world size.</summary>
    public const string Rank = "GRANARY_RANK";

    /// <summary>Number of ranks in the world group.</summary>
    public const string WorldSize = "GRANARY_WORLD_SIZE";

    /// <summary>host:port where rank 0 listens while the group forms.</summary>
    public const string Coordinator = "GRANARY_COORDINATOR";

    /// <summary>Path of an MLX-format hostfile; gives the world size and each rank's addresses when set.</summary>
    public const string Hostfile = "GRANARY_HOSTFILE";

    /// <summary>Backend name: auto, tcp, ring, mesh, shm (or a registered one such as nccl).</summary>
    public const string Backend = "GRANARY_BACKEND";

    /// <summary>Collective timeout in milliseconds: how long a rank waits for a peer to make progress.</summary>
    public const string TimeoutMilliseconds = "GRANARY_TIMEOUT_MS";

    /// <summary>How long group formation waits for all ranks to show up, in milliseconds.</summary>
    public const string ConnectTimeoutMilliseconds = "GRANARY_CONNECT_TIMEOUT_MS";
}
