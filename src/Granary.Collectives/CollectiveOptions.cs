using System.Collections;
using System.Globalization;

namespace Granary.Collectives;

/// <summary>Where this process sits in the group and how the data plane behaves.</summary>
public sealed class CollectiveOptions
{
    public const int DefaultCoordinatorPort = 29500;

    /// <summary>This process's rank in the world group.</summary>
    public int Rank { get; set; }

    /// <summary>Number of ranks in the world group.</summary>
    public int WorldSize { get; set; } = 1;

    /// <summary>host:port where rank 0 listens while the group forms; rank 0 binds it, the others connect to it.</summary>
    public string Coordinator { get; set; } = $"127.0.0.1:{DefaultCoordinatorPort}";

    /// <summary>auto (shared memory when every rank is on one host, else tcp), tcp, ring, mesh, shm, or a registered backend.</summary>
    public string Backend { get; set; } = "auto";

    /// <summary>The hosts of the hostfile, when there is one; rank i advertises the first address of host i.</summary>
    public IReadOnlyList<HostEntry>? Hosts { get; set; }

    /// <summary>How long a rank waits for a peer to make progress in a collective before failing. Infinite disables it.</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>How long group formation waits for every rank to connect.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>TCP connections per pair of ranks; large transfers are striped across them.</summary>
    public int SocketsPerPeer { get; set; } = 2;

    /// <summary>Kernel send and receive buffer size per socket.</summary>
    public int SocketBufferBytes { get; set; } = 4 << 20;

    /// <summary>
    /// TCP collectives take the mesh (one round, everyone to everyone) up to this size and the ring above: for an
    /// all-gather or reduce-scatter the size of one rank's block, for an all-reduce (ranks - 1) × its buffer, since the
    /// mesh sends the whole buffer to every peer where the ring sends 2(n-1)/n of it.
    /// </summary>
    public int SmallMessageBytes { get; set; } = 64 << 10;

    /// <summary>Largest ring segment per step; larger buffers are reduced in windows of world size × this.</summary>
    public int RingSegmentBytes { get; set; } = 1 << 20;

    /// <summary>
    /// Bytes each rank exposes in shared memory per buffer (two buffers alternate); larger transfers go through in
    /// windows of this size. Small enough that a window's copies stay in a core's L2 cache: on a 16-core Xeon, 128 KiB
    /// windows gave 2 ranks 5.8-7.1 GB/s bus bandwidth at 1-16 MiB where 4 MiB windows gave 3.3-4.9.
    /// </summary>
    public int SharedMemoryWindowBytes { get; set; } = 128 << 10;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid setting.</summary>
    public void Validate()
    {
        if (WorldSize < 1)
        {
            throw new ArgumentException($"{nameof(WorldSize)} must be at least 1, got {WorldSize}.");
        }

        if (Rank < 0 || Rank >= WorldSize)
        {
            throw new ArgumentException($"{nameof(Rank)} {Rank} is outside [0, {WorldSize}).");
        }

        if (Hosts is { } hosts && hosts.Count != WorldSize)
        {
            throw new ArgumentException($"The hostfile lists {hosts.Count} hosts but {nameof(WorldSize)} is {WorldSize}.");
        }

        ParseEndpoint(Coordinator);
        RequirePositive(Timeout, nameof(Timeout));
        RequirePositive(ConnectTimeout, nameof(ConnectTimeout));
        if (SocketsPerPeer is < 1 or > 16)
        {
            throw new ArgumentException($"{nameof(SocketsPerPeer)} must be in [1, 16], got {SocketsPerPeer}.");
        }

        if (SocketBufferBytes < 4096 || SmallMessageBytes < 0 || RingSegmentBytes < 4096 || SharedMemoryWindowBytes < 4096)
        {
            throw new ArgumentException(
                $"Buffer sizes out of range: {nameof(SocketBufferBytes)}={SocketBufferBytes}, {nameof(SmallMessageBytes)}={SmallMessageBytes}, " +
                $"{nameof(RingSegmentBytes)}={RingSegmentBytes}, {nameof(SharedMemoryWindowBytes)}={SharedMemoryWindowBytes} (byte sizes need at least 4096).");
        }
    }

    public CollectiveOptions Clone() => (CollectiveOptions)MemberwiseClone();

    /// <summary>
    /// Reads the variables `granary launch` sets (<see cref="DistributedEnvironment"/>). Returns null when none of
    /// rank, world size or hostfile is set, meaning this process was not launched as part of a group.
    /// </summary>
    public static CollectiveOptions? FromEnvironment(IDictionary? environment = null)
    {
        environment ??= Environment.GetEnvironmentVariables();
        string? Get(string name) => environment[name] as string is { Length: > 0 } value ? value : null;

        var rank = Get(DistributedEnvironment.Rank);
        var size = Get(DistributedEnvironment.WorldSize);
        var hostfile = Get(DistributedEnvironment.Hostfile);
        if (rank is null && size is null && hostfile is null)
        {
            return null;
        }

        var options = new CollectiveOptions();
        if (hostfile is not null)
        {
            options.Hosts = Collectives.Hostfile.Load(hostfile);
            options.WorldSize = options.Hosts.Count;
        }

        if (size is not null)
        {
            options.WorldSize = ParseInt(size, DistributedEnvironment.WorldSize);
        }

        options.Rank = rank is null ? throw new ArgumentException($"{DistributedEnvironment.Rank} is not set.") : ParseInt(rank, DistributedEnvironment.Rank);
        if (Get(DistributedEnvironment.Coordinator) is { } coordinator)
        {
            options.Coordinator = coordinator;
        }
        else if (options.Hosts is { } hosts && hosts[0].Ips.Count > 0)
        {
            options.Coordinator = $"{hosts[0].Ips[0]}:{DefaultCoordinatorPort}";
        }

        if (Get(DistributedEnvironment.Backend) is { } backend)
        {
            options.Backend = backend;
        }

        if (Get(DistributedEnvironment.TimeoutMilliseconds) is { } timeout)
        {
            options.Timeout = TimeSpan.FromMilliseconds(ParseInt(timeout, DistributedEnvironment.TimeoutMilliseconds));
        }

        if (Get(DistributedEnvironment.ConnectTimeoutMilliseconds) is { } connectTimeout)
        {
            options.ConnectTimeout = TimeSpan.FromMilliseconds(ParseInt(connectTimeout, DistributedEnvironment.ConnectTimeoutMilliseconds));
        }

        return options;
    }

    /// <summary>Splits "host:port" (or "[v6]:port").</summary>
    public static (string Host, int Port) ParseEndpoint(string endpoint)
    {
        var colon = endpoint.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(endpoint.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out var port) || port is < 1 or > 65535)
        {
            throw new ArgumentException($"Coordinator '{endpoint}' is not host:port.");
        }

        return (endpoint[..colon].Trim('[', ']'), port);
    }

    private static int ParseInt(string text, string name) =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value)
            ? value
            : throw new ArgumentException($"{name}='{text}' is not an integer.");

    private static void RequirePositive(TimeSpan value, string name)
    {
        if (value <= TimeSpan.Zero && value != System.Threading.Timeout.InfiniteTimeSpan)
        {
            throw new ArgumentException($"{name} must be positive or infinite, got {value}.");
        }
    }
}
