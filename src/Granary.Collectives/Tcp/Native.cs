using System.Runtime.InteropServices;

namespace Granary.Collectives.Tcp;

/// <summary>The few POSIX calls .NET does not expose without allocating: poll(2) over many sockets, and kill(pid, 0).</summary>
internal static partial class Native
{
    public const short PollIn = 0x0001;
    public const short PollOut = 0x0004;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short ReturnedEvents;
    }

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static unsafe partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    /// <summary>
    /// Whether <paramref name="socket"/> is ready for <paramref name="events"/> or has failed, without waiting; also
    /// true when poll itself fails, leaving the next socket call to report the error (or to find it not ready yet).
    /// </summary>
    public static unsafe bool IsReady(System.Net.Sockets.Socket socket, short events)
    {
        var fd = new PollFd { Fd = (int)socket.SafeHandle.DangerousGetHandle(), Events = events };
        return Poll(&fd, 1, 0) != 0;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    private const int NoSuchProcess = 3; // ESRCH

    [LibraryImport("libc", EntryPoint = "usleep")]
    private static partial int USleep(uint microseconds);

    /// <summary>A nap finer than Thread.Sleep's millisecond.</summary>
    public static void SleepMicroseconds(int microseconds) => USleep((uint)microseconds);

    /// <summary>False only when the process certainly no longer exists.</summary>
    public static bool ProcessExists(int pid) => Kill(pid, 0) == 0 || Marshal.GetLastPInvokeError() != NoSuchProcess;
}
