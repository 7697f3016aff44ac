using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;

namespace Granary.Gateway.Tests;

/// <summary>The silo program with `--gateway-http-port`: the single-host default, configured as a user would.</summary>
[Collection(GatewayCollection.Name)]
public sealed partial class SiloGatewayTests(GatewayFixture fixture)
{
    [Fact]
    public async Task A_silo_started_with_a_gateway_http_port_serves_the_api_and_stops_cleanly()
    {
        var (siloPort, gatewayPort) = FreePorts();
        var start = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in new[]
        {
            "exec", SiloAssembly, "--silo-name", "gateway-silo", "--silo-port", $"{siloPort}", "--gateway-port", $"{gatewayPort}",
            "--primary-silo", $"127.0.0.1:{siloPort}", "--cluster-id", $"gateway-{Guid.NewGuid():N}", "--threads", "1",
            "--gateway-http-port", "0",
            "--Granary:Gateway:DefaultModel", TestModels.Chat, $"--Granary:Gateway:Models:{TestModels.Chat}", fixture.ChatModelDirectory,
        })
        {
            start.ArgumentList.Add(argument);
        }

        var output = new StringBuilder();
        var listening = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        void OnLine(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (output)
            {
                output.AppendLine(line);
            }

            if (ListeningLine().Match(line) is { Success: true } match)
            {
                listening.TrySetResult(new Uri(match.Groups[1].Value));
            }
        }

        process.OutputDataReceived += (_, e) => OnLine(e.Data);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data);
        process.Exited += (_, _) => listening.TrySetException(new InvalidOperationException("The silo exited before its gateway listened."));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            Uri address;
            try
            {
                address = await listening.Task.WaitAsync(TimeSpan.FromSeconds(60));
            }
            catch (Exception e) when (e is TimeoutException or InvalidOperationException)
            {
                lock (output)
                {
                    throw new Xunit.Sdk.XunitException($"{e.Message}\n{output}");
                }
            }

            using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);
            var (status, body, _) = await Http.PostAsync(http, "/v1/chat/completions", Http.Chat("Tell me about the harvest.", 3));
            Assert.True(status == HttpStatusCode.OK, Http.Pretty(body));
            Assert.Equal(3, body["usage"]!["completion_tokens"]!.GetValue<int>());

            // SIGTERM: the gateway stops with the silo, which leaves the cluster and exits 0.
            using (var signal = Process.Start("kill", ["-TERM", $"{process.Id}"]))
            {
                await signal.WaitForExitAsync();
            }

            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(40));
            Assert.Equal(0, process.ExitCode);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
                await process.WaitForExitAsync();
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

    private static (int, int) FreePorts()
    {
        var listeners = new[] { new TcpListener(IPAddress.Loopback, 0), new TcpListener(IPAddress.Loopback, 0) };
        try
        {
            foreach (var listener in listeners)
            {
                listener.Start();
            }

            return (((IPEndPoint)listeners[0].LocalEndpoint).Port, ((IPEndPoint)listeners[1].LocalEndpoint).Port);
        }
        finally
        {
            foreach (var listener in listeners)
            {
                listener.Stop();
            }
        }
    }

    [GeneratedRegex("REST gateway listening on (http://\\S+/)")]
    private static partial Regex ListeningLine();
}
