using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Granary.Runtime.Tests;

/// <summary>A real silo process (the built Granary.Silo.dll under `dotnet exec`), killed when disposed.</summary>
public sealed class SiloProcess : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly TaskCompletionSource _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private SiloProcess(string name, int siloPort, int gatewayPort, IEnumerable<string> arguments, IReadOnlyList<string> launcher, string address)
    {
        Name = name;
        SiloPort = siloPort;
        GatewayPort = gatewayPort;
        Address = address;
        var start = new ProcessStartInfo(launcher.Count > 0 ? launcher[0] : "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var word in launcher.Skip(1).Concat(launcher.Count > 0 ? ["dotnet"] : []))
        {
            start.ArgumentList.Add(word);
        }

        start.ArgumentList.Add("exec");
        start.ArgumentList.Add(SiloAssembly);
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        _process = new Process { StartInfo = start };
        _process.OutputDataReceived += (_, e) => OnLine(e.Data);
        _process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        _process.Exited += (_, _) => _ready.TrySetException(new InvalidOperationException($"Silo {Name} exited before it was ready:\n{Output}"));
        _process.EnableRaisingEvents = true;
        _process.Start();
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string Name { get; }

    public int SiloPort { get; }

    public int GatewayPort { get; }

    /// <summary>The address the silo advertises (loopback unless it runs in a network namespace).</summary>
    public string Address { get; }

    public string Gateway => $"{Address}:{GatewayPort}";

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    /// <summary>The silo's build output beside this test's, in the same artifacts tree and configuration.</summary>
    private static string SiloAssembly
    {
        get
        {
            var testOutput = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar));
            var path = Path.Combine(testOutput.Parent!.Parent!.FullName, "Granary.Silo", testOutput.Name, "Granary.Silo.dll");
            return File.Exists(path) ? path : throw new FileNotFoundException($"The silo is not built at {path}.", path);
        }
    }

    /// <summary>
    /// Starts a silo and waits until it reports ready (it has joined the cluster). <paramref name="launcher"/> runs it
    /// through another command (e.g. `ip netns exec NAME`), and <paramref name="address"/> is the address it advertises there.
    /// </summary>
    public static async Task<SiloProcess> StartAsync(
        string name, int siloPort, int gatewayPort, IEnumerable<string> arguments, TimeSpan timeout, IReadOnlyList<string>? launcher = null, string address = "127.0.0.1")
    {
        string[] all = ["--silo-name", name, "--silo-port", $"{siloPort}", "--gateway-port", $"{gatewayPort}", "--threads", "1", .. arguments];
        var silo = new SiloProcess(name, siloPort, gatewayPort, all, launcher ?? [], address);
        try
        {
            await silo._ready.Task.WaitAsync(timeout);
            return silo;
        }
        catch (TimeoutException)
        {
            silo.Dispose();
            throw new TimeoutException($"Silo {name} was not ready within {timeout}:\n{silo.Output}");
        }
        catch
        {
            silo.Dispose();
            throw;
        }
    }

    /// <summary>Ports that were free a moment ago (the OS hands out distinct ephemeral ports).</summary>
    public static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        try
        {
            listeners.ForEach(listener => listener.Start());
            return [.. listeners.Select(listener => ((IPEndPoint)listener.LocalEndpoint).Port)];
        }
        finally
        {
            listeners.ForEach(listener => listener.Stop());
        }
    }

    /// <summary>SIGTERM, then waits for the process to exit; returns its exit code.</summary>
    public async Task<int> TerminateAsync(TimeSpan timeout)
    {
        using (var signal = Process.Start("kill", ["-TERM", $"{_process.Id}"]))
        {
            await signal.WaitForExitAsync();
        }

        using var deadline = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(deadline.Token);
        return _process.ExitCode;
    }

    /// <summary>SIGKILL: the process gets no chance to leave the cluster.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit(10_000);
        }
    }

    public void Dispose()
    {
        try
        {
            Kill();
        }
        catch (InvalidOperationException)
        {
            // It never started.
        }

        _process.Dispose();
    }

    private void OnLine(string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_output)
        {
            _output.AppendLine(line);
        }

        if (line.Contains($"Granary silo {Name} ready", StringComparison.Ordinal))
        {
            _ready.TrySetResult();
        }
    }
}
