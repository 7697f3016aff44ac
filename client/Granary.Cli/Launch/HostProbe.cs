using System.Diagnostics;
using System.Globalization;
using System.Net;

namespace Granary.Cli.Launch;

/// <summary>What `granary config` learned about one host.</summary>
internal sealed record HostReport(string Host, string MachineId, IReadOnlyList<string> Addresses, bool PortInUse, double ClockSkewSeconds);

/// <summary>Runs a small shell script on a host (over ssh or the launcher template) and reads back its facts.</summary>
internal static class HostProbe
{
    /// <summary>
    /// Prints the boot id (equal ids share memory), the time, the global IPv4 addresses, and whether anything listens on the port.
    /// Reads /proc/net/tcp rather than depending on ss or netstat being installed.
    /// </summary>
    public static string Script(int port) =>
        "echo \"boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)/$(hostname)\"; " +
        "echo \"time=$(date +%s.%N)\"; " +
        "for a in $(ip -o -4 addr show scope global 2>/dev/null | awk '{print $4}'); do echo \"ip=${a%/*}\"; done; " +
        $"awk -v p={port:X4} 'FNR>1 && $4==\"0A\" && substr($2, index($2, \":\") + 1) == p {{ f = 1 }} END {{ print (f ? \"port=busy\" : \"port=free\") }}' /proc/net/tcp /proc/net/tcp6 2>/dev/null";

    public static async Task<HostReport> ProbeAsync(string host, string? launcherTemplate, int port, TimeSpan timeout, CancellationToken cancel)
    {
        var command = RankCommand.ForHost(0, host, launcherTemplate, "/", new Dictionary<string, string>(), ["sh", "-c", Script(port)]);
        var before = UnixSeconds();
        var (exitCode, output, error) = await RunAsync(command, timeout, cancel);
        var after = UnixSeconds();
        if (exitCode != 0)
        {
            throw new HostUnreachableException(host, $"{command} exited with code {exitCode}{(error.Length > 0 ? ": " + error.Trim() : "")}");
        }

        string? machine = null;
        double? remoteTime = null;
        var addresses = new List<string>();
        var portInUse = false;
        foreach (var line in output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var equals = line.IndexOf('=', StringComparison.Ordinal);
            if (equals < 0)
            {
                continue;
            }

            var value = line[(equals + 1)..];
            switch (line[..equals])
            {
                case "boot": machine = value; break;
                case "time" when double.TryParse(value, NumberStyles.Float, CultureInfo.InvariantCulture, out var t): remoteTime = t; break;
                case "ip" when IPAddress.TryParse(value, out _): addresses.Add(value); break;
                case "port": portInUse = value == "busy"; break;
            }
        }

        if (machine is null || remoteTime is null)
        {
            throw new HostUnreachableException(host, $"the probe printed no machine id or time (output: '{output.Trim()}')");
        }

        // Ranks on this machine's loopback name talk over loopback, never over an outside interface.
        if (host == "localhost" || (IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip)))
        {
            addresses = ["127.0.0.1"];
        }

        return new HostReport(host, machine, addresses, portInUse, remoteTime.Value - ((before + after) / 2));
    }

    /// <summary>Raises the kernel's socket buffer ceilings so the data plane's large buffers take effect (needs root).</summary>
    public static async Task<string?> AutoSetupAsync(string host, string? launcherTemplate, int socketBufferBytes, TimeSpan timeout, CancellationToken cancel)
    {
        var limit = (2 * socketBufferBytes).ToString(CultureInfo.InvariantCulture);
        var command = RankCommand.ForHost(0, host, launcherTemplate, "/", new Dictionary<string, string>(),
            ["sh", "-c", $"sysctl -q -w net.core.rmem_max={limit} net.core.wmem_max={limit}"]);
        var (exitCode, _, error) = await RunAsync(command, timeout, cancel);
        return exitCode == 0 ? null : $"{host}: could not raise socket buffer limits (exit {exitCode}): {error.Trim()}";
    }

    private static async Task<(int ExitCode, string Output, string Error)> RunAsync(RankCommand command, TimeSpan timeout, CancellationToken cancel)
    {
        var info = new ProcessStartInfo(command.FileName) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in command.Arguments)
        {
            info.ArgumentList.Add(argument);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException($"cannot start {command.FileName}");
        var output = process.StandardOutput.ReadToEndAsync(cancel);
        var error = process.StandardError.ReadToEndAsync(cancel);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(timeout);
        try
        {
            await process.WaitForExitAsync(deadline.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            return (124, "", $"no answer within {timeout.TotalSeconds:0} s");
        }

        return (process.ExitCode, await output, await error);
    }

    private static double UnixSeconds() => DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
}

internal sealed class HostUnreachableException(string host, string reason) : Exception($"host {host} is unreachable: {reason}");
