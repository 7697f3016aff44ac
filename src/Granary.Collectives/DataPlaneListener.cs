using System.Net;
using System.Net.Sockets;
using Granary.Collectives.Tcp;

namespace Granary.Collectives;

/// <summary>Where one rank's data plane listens, and an identity of its machine (equal identities share memory).</summary>
public sealed record DataPlanePeer(string Address, int Port, string HostId)
{
    public override string ToString() => $"{Address}:{Port}";
}

/// <summary>
/// A rank's data-plane socket, bound and listening before its group forms, so that its endpoint can be handed to the
/// other ranks by some other channel (Granary's shard grains exchange theirs through the coordinator grain). Passed to
/// <see cref="Group.Init(CollectiveOptions, DataPlaneListener, IReadOnlyList{DataPlanePeer}, Guid)"/>, which takes it
/// over; dispose it if the group is never formed.
/// </summary>
public sealed class DataPlaneListener : IDisposable
{
    private Socket? _socket;

    private DataPlaneListener(Socket socket, DataPlanePeer endpoint)
    {
        _socket = socket;
        Endpoint = endpoint;
    }

    public DataPlanePeer Endpoint { get; }

    /// <summary>
    /// Listens on <paramref name="address"/> (an IP address of this machine) and <paramref name="port"/> (0: any free
    /// port). An address that is not local (a NAT's public address) is advertised as it is while the socket listens
    /// on every local address.
    /// </summary>
    public static DataPlaneListener Bind(string address, int port = 0)
    {
        if (!IPAddress.TryParse(address, out var ip))
        {
            throw new ArgumentException($"Data-plane address '{address}' is not an IP address.", nameof(address));
        }

        var socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            try
            {
                socket.Bind(new IPEndPoint(ip, port));
            }
            catch (SocketException e) when (e.SocketErrorCode == SocketError.AddressNotAvailable)
            {
                socket.Bind(new IPEndPoint(ip.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, port));
            }

            socket.Listen(512);
            var bound = ((IPEndPoint)socket.LocalEndPoint!).Port;
            return new DataPlaneListener(socket, new DataPlanePeer(ip.ToString(), bound, TcpFabric.LocalHostId()));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new CollectiveException($"Cannot listen for the data plane on {address}:{port}: {e.Message}", operation: "Init", innerException: e);
        }
    }

    /// <summary>Hands the socket to the group being formed; the listener is empty afterwards.</summary>
    internal Socket Take() =>
        Interlocked.Exchange(ref _socket, null) ?? throw new ObjectDisposedException(nameof(DataPlaneListener), "This data-plane listener was already used or disposed.");

    public void Dispose() => Interlocked.Exchange(ref _socket, null)?.Dispose();
}
