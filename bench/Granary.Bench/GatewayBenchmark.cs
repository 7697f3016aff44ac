using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Granary.Gateway;
using Granary.Grains;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Granary.Bench;

/// <summary>
/// `gateway`: N concurrent clients (1, 4, 16, 64 by default), each sending streamed chat requests one after another
/// for a fixed time, against a silo in this process that serves the REST gateway. Prints requests/s, output tokens/s,
/// time to first token p50/p99, and each row's output tokens/s against the one-client row (serving one at a time),
/// the peer every row is measured against in the same run. `--silos N --layout tensor|pipeline` splits the model over
/// N silos of this process instead (their data plane over shared memory), so the batch moves through the shards.
/// </summary>
internal static class GatewayBenchmark
{
    public static int Run(string[] args) => RunAsync(args).GetAwaiter().GetResult();

    private static async Task<int> RunAsync(string[] args)
    {
        var clientCounts = (Option(args, "--clients") ?? "1,4,16,64").Split(',').Select(int.Parse).ToArray();
        var duration = TimeSpan.FromSeconds(double.Parse(Option(args, "--seconds") ?? "10", CultureInfo.InvariantCulture));
        var maxTokens = int.Parse(Option(args, "--max-tokens") ?? "32", CultureInfo.InvariantCulture);
        var model = Option(args, "--model") ?? "builtin";
        var threads = Option(args, "--threads") is { } t ? int.Parse(t, CultureInfo.InvariantCulture) : (int?)null;
        var siloCount = int.Parse(Option(args, "--silos") ?? "1", CultureInfo.InvariantCulture);
        var layout = Enum.Parse<ShardLayout>(Option(args, "--layout") ?? (siloCount > 1 ? "tensor" : "single"), ignoreCase: true);

        var primaryPort = FreePort();
        var hosts = Enumerable.Range(0, siloCount).Select(index =>
        {
            var siloPort = index == 0 ? primaryPort : FreePort();
            var builder = new HostBuilder()
                .ConfigureLogging(logging => logging.SetMinimumLevel(LogLevel.Warning))
                .UseOrleans(silo => silo
                    .UseLocalhostClustering(siloPort, FreePort(), new IPEndPoint(IPAddress.Loopback, primaryPort))
                    .Configure<Orleans.Configuration.SiloOptions>(options => options.SiloName = $"silo{index}")
                    .AddGranary(modelHost => modelHost.Threads = threads, coordinator =>
                    {
                        coordinator.Layout = layout;
                        coordinator.MaxShards = siloCount;
                        coordinator.DataPlaneBackend = "shm";
                    }));
            if (index == 0)
            {
                builder.ConfigureServices(services => services.AddGranaryGatewayServer(gateway =>
                {
                    gateway.Port = 0;
                    gateway.DefaultModel = model;
                }));
            }

            return builder.Build();
        }).ToList();
        foreach (var silo in hosts)
        {
            await silo.StartAsync();
        }

        var host = hosts[0];
        try
        {
            var address = host.Services.GetRequiredService<GatewayServer>().Address!;
            using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromMinutes(10) };
            // Loads the model and warms the code paths before anything is timed.
            await RequestAsync(http, model, maxTokens, Stopwatch.GetTimestamp());

            Console.WriteLine(
                $"Gateway benchmark: model {model} over {siloCount} silo(s), layout {layout.ToString().ToLowerInvariant()}, " +
                $"{Environment.ProcessorCount} cores, load {File.ReadAllText("/proc/loadavg").Split(' ')[0]}, " +
                $"{maxTokens} output tokens per request (ignore_eos), {duration.TotalSeconds:F0} s per row, streamed chat through {address}");
            Console.WriteLine("TTFT: from sending the request to its first event, which the gateway sends once the first token exists.");
            Console.WriteLine();
            Console.WriteLine("| clients | requests | requests/s | output tok/s | TTFT p50 ms | TTFT p99 ms | tok/s vs one at a time |");
            Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
            double? oneAtATime = null;
            foreach (var clients in clientCounts)
            {
                var row = await MeasureAsync(http, model, maxTokens, clients, duration);
                oneAtATime ??= clients == 1 ? row.TokensPerSecond : null;
                var ratio = oneAtATime is { } baseline ? $"{row.TokensPerSecond / baseline:F2}x" : "(no 1-client row)";
                Console.WriteLine(
                    $"| {clients} | {row.Requests} | {row.Requests / row.Seconds:F2} | {row.TokensPerSecond:F1} | " +
                    $"{Percentile(row.FirstTokenSeconds, 0.50) * 1e3:F0} | {Percentile(row.FirstTokenSeconds, 0.99) * 1e3:F0} | {ratio} |");
            }
        }
        finally
        {
            foreach (var silo in Enumerable.Reverse(hosts))
            {
                await silo.StopAsync();
                silo.Dispose();
            }
        }

        return 0;
    }

    private static async Task<Row> MeasureAsync(HttpClient http, string model, int maxTokens, int clients, TimeSpan duration)
    {
        var clock = Stopwatch.StartNew();
        var results = await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
        {
            var mine = new List<(double FirstToken, int Tokens)>();
            // A request that starts before the deadline runs to its end and counts.
            while (clock.Elapsed < duration)
            {
                mine.Add(await RequestAsync(http, model, maxTokens, Stopwatch.GetTimestamp()));
            }

            return mine;
        }));
        var seconds = clock.Elapsed.TotalSeconds;
        var all = results.SelectMany(result => result).ToList();
        return new Row(all.Count, seconds, all.Sum(result => result.Tokens) / seconds, [.. all.Select(result => result.FirstToken).Order()]);
    }

    /// <summary>One streamed chat request: seconds to its first event, and the completion tokens its usage reports.</summary>
    private static async Task<(double FirstToken, int Tokens)> RequestAsync(HttpClient http, string model, int maxTokens, long start)
    {
        var body = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model"] = model,
            ["messages"] = new[] { new Dictionary<string, string> { ["role"] = "user", ["content"] = "Tell me about the harvest in the village." } },
            ["max_tokens"] = maxTokens,
            ["ignore_eos"] = true,
            ["stream"] = true,
            ["stream_options"] = new Dictionary<string, bool> { ["include_usage"] = true },
        });
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        if (response.StatusCode != HttpStatusCode.OK)
        {
            throw new InvalidOperationException($"The gateway answered {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        }

        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        double? firstToken = null;
        var tokens = 0;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }

            firstToken ??= Stopwatch.GetElapsedTime(start).TotalSeconds;
            if (line.Contains("\"usage\"", StringComparison.Ordinal))
            {
                using var usage = JsonDocument.Parse(line["data: ".Length..]);
                tokens = usage.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32();
            }
        }

        return (firstToken ?? throw new InvalidOperationException("The stream had no events."), tokens);
    }

    private static double Percentile(double[] sorted, double fraction) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(fraction * sorted.Length) - 1)];

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }

    private sealed record Row(int Requests, double Seconds, double TokensPerSecond, double[] FirstTokenSeconds);
}
