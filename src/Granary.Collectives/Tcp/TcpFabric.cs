using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Granary.Collectives.Tcp;

/// <summary>
/// Connections between every pair of ranks (<see cref="CollectiveOptions.SocketsPerPeer"/> each), formed through the
/// coordinator: rank 0 collects every rank's data listener address and hands out the table, then rank j connects to
/// every rank i &lt; j. Sockets are non-blocking afterwards and driven by <see cref="TransferEngine"/>.
/// The data connections are formed without async socket calls: the first one that has to wait registers the socket
/// with .NET's socket engine for good, and from then on every message that arrives wakes the engine's thread, which
/// hands the event to a thread-pool worker: two thread hand-offs per message, competing with the ranks for cores.
/// </summary>
internal sealed class TcpFabric : IDisposable
{
    private const int Magic = 0x47524E31; // "GRN1"

    private readonly Socket[][] _sockets;
    private int _broken;

    private TcpFabric(CollectiveOptions options, Socket[][] sockets, string[] hostIds, Guid jobId)
    {
        Options = options;
        _sockets = sockets;
        HostIds = hostIds;
        JobId = jobId;
    }

    public CollectiveOptions Options { get; }

    public int Rank => Options.Rank;

    public int Size => Options.WorldSize;

    /// <summary>Per world rank, an identity of its machine (boot id and host name).</summary>
    public string[] HostIds { get; }

    /// <summary>Random per formed group; names shared-memory files and rejects stray connections.</summary>
    public Guid JobId { get; }

    public bool IsBroken => Volatile.Read(ref _broken) != 0;

    public Socket Socket(int worldPeer, int index) => _sockets[worldPeer][index];

    /// <summary>
    /// Shuts every connection down so peers blocked on this rank fail at once instead of waiting for their timeout.
    /// </summary>
    public void Break()
    {
        if (Interlocked.Exchange(ref _broken, 1) != 0)
        {
            return;
        }

        foreach (var peer in _sockets)
        {
            foreach (var socket in peer ?? [])
            {
                try
                {
                    socket.Shutdown(SocketShutdown.Both);
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    // Already gone: nothing left to tell the peer.
                }
            }
        }
    }

    public void Dispose()
    {
        Volatile.Write(ref _broken, 1);
        foreach (var peer in _sockets)
        {
            foreach (var socket in peer ?? [])
            {
                socket.Dispose();
            }
        }
    }

    public static string LocalHostId()
    {
        string bootId;
        try
        {
            bootId = File.ReadAllText("/proc/sys/kernel/random/boot_id").Trim();
        }
        catch (IOException)
        {
            bootId = "no-boot-id";
        }

        return $"{Dns.GetHostName()}/{bootId}";
    }

    public static TcpFabric Connect(CollectiveOptions options)
    {
        options.Validate();
        if (options.WorldSize == 1)
        {
            return new TcpFabric(options, [[]], [LocalHostId()], Guid.NewGuid());
        }

        using var cancellation = new CancellationTokenSource(options.ConnectTimeout);
        try
        {
            return ConnectAsync(options, cancellation.Token).GetAwaiter().GetResult();
        }
        catch (OperationCanceledException e) when (cancellation.IsCancellationRequested)
        {
            throw new CollectiveException(
                $"Rank {options.Rank}: the group of {options.WorldSize} did not form within {options.ConnectTimeout.TotalSeconds:0.#} s " +
                $"(coordinator {options.Coordinator}).", operation: "Init", innerException: e);
        }
    }

    private static async Task<TcpFabric> ConnectAsync(CollectiveOptions options, CancellationToken cancel)
    {
        var (coordinatorHost, coordinatorPort) = CollectiveOptions.ParseEndpoint(options.Coordinator);
        using var dataListener = Listen(new IPEndPoint(IPAddress.Any, 0), options, "data listener");
        var dataPort = ((IPEndPoint)dataListener.LocalEndPoint!).Port;
        var hostId = LocalHostId();

        RankAddress[] table;
        Guid jobId;
        if (options.Rank == 0)
        {
            using var coordinator = Listen(new IPEndPoint(IPAddress.Any, coordinatorPort), options, $"coordinator port {coordinatorPort}");
            var advertised = options.Hosts?[0].Ips.FirstOrDefault() ?? (await ResolveAsync(coordinatorHost, cancel)).ToString();
            (table, jobId) = await GatherTableAsync(coordinator, options, new RankAddress(advertised, dataPort, hostId), cancel);
        }
        else
        {
            (table, jobId) = await JoinAsync(coordinatorHost, coordinatorPort, options, dataPort, hostId, cancel);
        }

        var sockets = await ConnectMeshAsync(dataListener, table, options, jobId, cancel);
        return new TcpFabric(options, sockets, table.Select(t => t.HostId).ToArray(), jobId);
    }

    /// <summary>
    /// Forms the connections from a peer table the caller already exchanged (Granary's shard grains pass theirs through
    /// the coordinator grain), without a coordinator rank: <paramref name="listener"/> is this rank's bound and
    /// listening socket at <paramref name="peers"/>[rank], which the fabric takes over.
    /// </summary>
    public static TcpFabric ConnectToPeers(CollectiveOptions options, Socket listener, IReadOnlyList<DataPlanePeer> peers, Guid groupId)
    {
        using (listener)
        {
            options.Validate();
            var hostIds = peers.Select(peer => peer.HostId).ToArray();
            if (options.WorldSize == 1)
            {
                return new TcpFabric(options, [[]], hostIds, groupId);
            }

            var table = peers.Select(peer => new RankAddress(peer.Address, peer.Port, peer.HostId)).ToArray();
            using var cancellation = new CancellationTokenSource(options.ConnectTimeout);
            try
            {
                var sockets = ConnectMeshAsync(listener, table, options, groupId, cancellation.Token).GetAwaiter().GetResult();
                return new TcpFabric(options, sockets, hostIds, groupId);
            }
            catch (OperationCanceledException e) when (cancellation.IsCancellationRequested)
            {
                throw new CollectiveException(
                    $"Rank {options.Rank}: the group of {options.WorldSize} did not form within {options.ConnectTimeout.TotalSeconds:0.#} s " +
                    $"(peers {string.Join(", ", peers)}).", operation: "Init", innerException: e);
            }
        }
    }

    /// <summary>Connects to every lower rank and accepts every higher one; the first failure ends the others at once.</summary>
    private static async Task<Socket[][]> ConnectMeshAsync(Socket dataListener, RankAddress[] table, CollectiveOptions options, Guid jobId, CancellationToken cancel)
    {
        var sockets = new Socket[options.WorldSize][];
        for (var peer = 0; peer < options.WorldSize; peer++)
        {
            sockets[peer] = peer == options.Rank ? [] : new Socket[options.SocketsPerPeer];
        }

        using var failed = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        async Task CancelOthersOnFailure(Task task)
        {
            try
            {
                await task;
            }
            catch
            {
                await failed.CancelAsync();
                throw;
            }
        }

        Task[] tasks =
        [
            CancelOthersOnFailure(AcceptPeersAsync(dataListener, options, jobId, sockets, failed.Token)),
            .. Enumerable.Range(0, options.Rank).SelectMany(peer => Enumerable.Range(0, options.SocketsPerPeer)
                .Select(index => CancelOthersOnFailure(ConnectPeerAsync(table[peer], peer, index, options, jobId, sockets, failed.Token)))),
        ];
        try
        {
            await Task.WhenAll(tasks);
        }
        catch
        {
            foreach (var socket in sockets.SelectMany(s => s))
            {
                socket?.Dispose();
            }

            // Report the failure that started it, not the cancellations it caused.
            var cause = tasks.Where(task => task.IsFaulted).Select(task => task.Exception!.InnerException).FirstOrDefault(e => e is not OperationCanceledException);
            if (cause is not null)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(cause);
            }

            throw;
        }

        foreach (var socket in sockets.SelectMany(s => s))
        {
            Tune(socket, options);
            socket.Blocking = false;
        }

        return sockets;
    }

    private sealed record RankAddress(string Address, int Port, string HostId);

    private static Socket Listen(IPEndPoint endpoint, CollectiveOptions options, string what)
    {
        var listener = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // A re-formed group binds the coordinator port again while old connections sit in TIME_WAIT.
            listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            listener.Bind(endpoint);
            listener.Listen(512);
            return listener;
        }
        catch (SocketException e)
        {
            listener.Dispose();
            var reason = e.SocketErrorCode == SocketError.AddressAlreadyInUse ? "is already in use by another process" : $"cannot be bound: {e.Message}";
            throw new CollectiveException($"Rank {options.Rank}: {what} {endpoint} {reason}.", operation: "Init", innerException: e);
        }
    }

    private static async Task<IPAddress> ResolveAsync(string host, CancellationToken cancel)
    {
        if (IPAddress.TryParse(host, out var address))
        {
            return address;
        }

        var addresses = await Dns.GetHostAddressesAsync(host, AddressFamily.InterNetwork, cancel);
        return addresses.Length > 0 ? addresses[0] : throw new CollectiveException($"Coordinator host '{host}' has no IPv4 address.", operation: "Init");
    }

    private static async Task<(RankAddress[] Table, Guid JobId)> GatherTableAsync(Socket coordinator, CollectiveOptions options, RankAddress self, CancellationToken cancel)
    {
        var table = new RankAddress?[options.WorldSize];
        table[0] = self;
        var joined = new Socket?[options.WorldSize];
        try
        {
            var missing = options.WorldSize - 1;
            while (missing > 0)
            {
                Socket connection;
                try
                {
                    connection = await coordinator.AcceptAsync(cancel);
                }
                catch (OperationCanceledException)
                {
                    var absent = Enumerable.Range(1, options.WorldSize - 1).Where(r => table[r] is null);
                    throw new CollectiveException(
                        $"Rank 0: ranks {string.Join(", ", absent)} did not join the coordinator {options.Coordinator} within {options.ConnectTimeout.TotalSeconds:0.#} s.",
                        peerRank: absent.First(), operation: "Init");
                }

                connection.Blocking = false;
                var hello = await ReadMessageAsync(connection, cancel);
                var (rank, size, address, port, hostId) = ParseHello(hello);
                if (size != options.WorldSize || rank <= 0 || rank >= options.WorldSize || table[rank] is not null)
                {
                    // A stray or stale process: refuse it, keep waiting for the real one.
                    connection.Dispose();
                    continue;
                }

                table[rank] = new RankAddress(address, port, hostId);
                joined[rank] = connection;
                missing--;
            }

            var jobId = Guid.NewGuid();
            var reply = new MessageWriter();
            reply.Write(jobId.ToByteArray());
            foreach (var entry in table)
            {
                reply.Write(entry!.Address);
                reply.Write(entry.Port);
                reply.Write(entry.HostId);
            }

            var bytes = reply.ToMessage();
            await Task.WhenAll(joined.Skip(1).Select(s => s!.SendAsync(bytes, cancel).AsTask()));
            return (table.Select(t => t!).ToArray(), jobId);
        }
        finally
        {
            foreach (var socket in joined)
            {
                socket?.Dispose();
            }
        }
    }

    private static async Task<(RankAddress[] Table, Guid JobId)> JoinAsync(string host, int port, CollectiveOptions options, int dataPort, string hostId, CancellationToken cancel)
    {
        Exception? last = null;
        while (true)
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            try
            {
                await socket.ConnectAsync(host, port, cancel);
                socket.Blocking = false;
                var advertised = options.Hosts?[options.Rank].Ips.FirstOrDefault() ?? ((IPEndPoint)socket.LocalEndPoint!).Address.ToString();
                var hello = new MessageWriter();
                hello.Write(options.Rank);
                hello.Write(options.WorldSize);
                hello.Write(advertised);
                hello.Write(dataPort);
                hello.Write(hostId);
                await socket.SendAsync(hello.ToMessage(), cancel);
                var reply = new MessageReader(await ReadMessageAsync(socket, cancel));
                var jobId = new Guid(reply.ReadBytes(16));
                var table = new RankAddress[options.WorldSize];
                for (var r = 0; r < table.Length; r++)
                {
                    table[r] = new RankAddress(reply.ReadString(), reply.ReadInt(), reply.ReadString());
                }

                return (table, jobId);
            }
            catch (Exception e) when (e is SocketException or IOException)
            {
                // The coordinator may not be up yet: retry until the connect timeout (then ConnectAsync throws).
                last = e;
                await Task.Delay(50, CancellationToken.None);
            }
            catch (OperationCanceledException e) when (!socket.Connected)
            {
                throw new CollectiveException(
                    $"Rank {options.Rank}: could not reach the coordinator {options.Coordinator} within {options.ConnectTimeout.TotalSeconds:0.#} s" +
                    (last is null ? "." : $": {last.Message}"),
                    peerRank: 0, operation: "Init", innerException: last ?? e);
            }
            finally
            {
                socket.Dispose();
            }
        }
    }

    private static async Task AcceptPeersAsync(Socket listener, CollectiveOptions options, Guid jobId, Socket[][] sockets, CancellationToken cancel)
    {
        var expected = (options.WorldSize - 1 - options.Rank) * options.SocketsPerPeer;
        while (expected > 0)
        {
            // Only the listener joins .NET's socket engine; the accepted socket is read by polling.
            var connection = await listener.AcceptAsync(cancel);
            connection.Blocking = false;
            var header = new MessageReader(await ReadMessageAsync(connection, cancel));
            var valid = header.ReadInt() == Magic & new Guid(header.ReadBytes(16)) == jobId;
            var peer = header.ReadInt();
            var index = header.ReadInt();
            if (!valid || peer <= options.Rank || peer >= options.WorldSize || index < 0 || index >= options.SocketsPerPeer || sockets[peer][index] is not null)
            {
                connection.Dispose();
                continue;
            }

            sockets[peer][index] = connection;
            expected--;
        }
    }

    private static async Task ConnectPeerAsync(RankAddress address, int peer, int index, CollectiveOptions options, Guid jobId, Socket[][] sockets, CancellationToken cancel)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            // Buffer sizes must be set before connecting for the TCP window scale to take them into account.
            Tune(socket, options);
            socket.Blocking = false;
            try
            {
                socket.Connect(IPAddress.Parse(address.Address), address.Port);
            }
            catch (SocketException e) when (e.SocketErrorCode is SocketError.WouldBlock or SocketError.InProgress)
            {
                // Still connecting: the header's send waits for it and reports a failed connect.
            }

            var header = new MessageWriter();
            header.Write(Magic);
            header.Write(jobId.ToByteArray());
            header.Write(options.Rank);
            header.Write(index);
            await SendExactlyAsync(socket, header.ToMessage(), cancel);
            sockets[peer][index] = socket;
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new CollectiveException(
                $"Rank {options.Rank}: cannot connect to rank {peer} at {address.Address}:{address.Port}: {e.Message}", peer, "Init", e);
        }
    }

    private static void Tune(Socket socket, CollectiveOptions options)
    {
        socket.NoDelay = true;
        socket.SendBufferSize = options.SocketBufferBytes;
        socket.ReceiveBufferSize = options.SocketBufferBytes;
    }

    private static (int Rank, int Size, string Address, int Port, string HostId) ParseHello(byte[] message)
    {
        var reader = new MessageReader(message);
        return (reader.ReadInt(), reader.ReadInt(), reader.ReadString(), reader.ReadInt(), reader.ReadString());
    }

    /// <summary>Reads one length-prefixed setup message from a non-blocking socket.</summary>
    private static async Task<byte[]> ReadMessageAsync(Socket socket, CancellationToken cancel)
    {
        var length = new byte[4];
        await ReceiveExactlyAsync(socket, length, cancel);
        var size = BinaryPrimitives.ReadInt32LittleEndian(length);
        if (size is < 0 or > 1 << 20)
        {
            throw new IOException($"Setup message of {size} bytes from {socket.RemoteEndPoint} is not from a Granary rank.");
        }

        var body = new byte[size];
        await ReceiveExactlyAsync(socket, body, cancel);
        return body;
    }

    private static async Task ReceiveExactlyAsync(Socket socket, Memory<byte> buffer, CancellationToken cancel)
    {
        while (buffer.Length > 0)
        {
            var n = socket.Receive(buffer.Span, SocketFlags.None, out var error);
            if (error == SocketError.WouldBlock)
            {
                await WaitUntilReadyAsync(socket, Native.PollIn, cancel);
                continue;
            }

            if (error != SocketError.Success)
            {
                throw new SocketException((int)error);
            }

            if (n == 0)
            {
                throw new IOException($"{socket.RemoteEndPoint} closed the connection during group setup.");
            }

            buffer = buffer[n..];
        }
    }

    private static async Task SendExactlyAsync(Socket socket, ReadOnlyMemory<byte> buffer, CancellationToken cancel)
    {
        while (buffer.Length > 0)
        {
            var n = socket.Send(buffer.Span, SocketFlags.None, out var error);
            if (error == SocketError.WouldBlock)
            {
                await WaitUntilReadyAsync(socket, Native.PollOut, cancel);
                continue;
            }

            if (error != SocketError.Success)
            {
                throw new SocketException((int)error);
            }

            buffer = buffer[n..];
        }
    }

    /// <summary>
    /// Waits for a non-blocking socket to become ready (or fail) by polling it each millisecond instead of through an
    /// async socket call, which would register it with .NET's socket engine (see the class summary). Setup happens once.
    /// </summary>
    private static async Task WaitUntilReadyAsync(Socket socket, short events, CancellationToken cancel)
    {
        while (!Native.IsReady(socket, events))
        {
            await Task.Delay(1, cancel);
        }
    }

    private sealed class MessageWriter
    {
        private readonly MemoryStream _stream = new();

        public void Write(int value)
        {
            Span<byte> bytes = stackalloc byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(bytes, value);
            _stream.Write(bytes);
        }

        public void Write(byte[] bytes) => _stream.Write(bytes);

        public void Write(string value)
        {
            var bytes = Encoding.UTF8.GetBytes(value);
            Write(bytes.Length);
            _stream.Write(bytes);
        }

        public byte[] ToMessage()
        {
            var body = _stream.ToArray();
            var message = new byte[4 + body.Length];
            BinaryPrimitives.WriteInt32LittleEndian(message, body.Length);
            body.CopyTo(message, 4);
            return message;
        }
    }

    private sealed class MessageReader(byte[] message)
    {
        private int _offset;

        public int ReadInt()
        {
            var value = BinaryPrimitives.ReadInt32LittleEndian(message.AsSpan(_offset));
            _offset += 4;
            return value;
        }

        public byte[] ReadBytes(int count)
        {
            var bytes = message.AsSpan(_offset, count).ToArray();
            _offset += count;
            return bytes;
        }

        public string ReadString()
        {
            var length = ReadInt();
            var value = Encoding.UTF8.GetString(message, _offset, length);
            _offset += length;
            return value;
        }
    }
}
