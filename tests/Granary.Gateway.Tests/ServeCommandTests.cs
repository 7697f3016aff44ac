using System.Diagnostics;
using System.Net;
using System.Text.RegularExpressions;
using Granary.Testing;

namespace Granary.Gateway.Tests;

/// <summary>`granary serve`: the gateway as its own process, an Orleans client of the cluster.</summary>
[Collection(GatewayCollection.Name)]
public sealed partial class ServeCommandTests(GatewayFixture fixture)
{
    [Fact]
    public async Task Granary_serve_answers_as_a_separate_client_process()
    {
        var options = fixture.Cluster.Options;
        var start = new ProcessStartInfo(GranaryCli.Dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var argument in new[]
        {
            GranaryCli.Assembly, "serve", "--port", "0",
            "--gateway", fixture.Cluster.Primary!.GatewayAddress!.Endpoint.ToString(),
            "--cluster-id", options.ClusterId, "--service-id", options.ServiceId,
            "--model", TestModels.Chat, "--served-model", $"{TestModels.Chat}={fixture.ChatModelDirectory}",
            "--served-model", $"lora={fixture.ChatModelDirectory}", "--served-adapter", $"lora={GatewayFixture.AdapterDirectory}",
        })
        {
            start.ArgumentList.Add(argument);
        }

        start.Environment["GRANARY_DEBUG"] = "1";
        using var process = Process.Start(start)!;
        var errors = process.StandardError.ReadToEndAsync();
        try
        {
            var seen = new System.Text.StringBuilder();
            var address = await ReadAddressAsync(process.StandardOutput, seen).WaitAsync(TimeSpan.FromSeconds(60));
            if (address is null)
            {
                Assert.Fail($"granary serve exited before listening: {await errors}\n{seen}");
            }

            using var http = new HttpClient { BaseAddress = address, Timeout = TimeSpan.FromSeconds(60) };

            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);
            var (status, body, _) = await Http.PostAsync(http, "/v1/chat/completions", Http.Chat("Tell me about the harvest.", 4));
            Assert.True(status == HttpStatusCode.OK, Http.Pretty(body));
            Assert.Equal(4, body["usage"]!["completion_tokens"]!.GetValue<int>());
            var (unknownStatus, _, _) = await Http.PostAsync(http, "/v1/chat/completions", Http.Chat("hi", 4, TestModels.Reference));
            Assert.Equal(HttpStatusCode.NotFound, unknownStatus);

            // --served-adapter: the same model and adapters as the silo gateway's adapted model, so the same tokens.
            var adapted = Http.Chat("Tell me about the harvest.", 6, TestModels.Adapted);
            adapted["return_token_ids"] = true;
            var (_, expected, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", adapted);
            adapted["model"] = "lora";
            var (loraStatus, lora, _) = await Http.PostAsync(http, "/v1/chat/completions", adapted);
            Assert.True(loraStatus == HttpStatusCode.OK, Http.Pretty(lora));
            Assert.Equal(Http.Ints(expected["choices"]![0]!["token_ids"]), Http.Ints(lora["choices"]![0]!["token_ids"]));
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
        }
    }

    private static async Task<Uri?> ReadAddressAsync(StreamReader output, System.Text.StringBuilder seen)
    {
        while (await output.ReadLineAsync() is { } line)
        {
            seen.AppendLine(line);
            if (ListeningLine().Match(line) is { Success: true } match)
            {
                return new Uri(match.Groups[1].Value);
            }
        }

        return null;
    }

    [GeneratedRegex("listening on (http://\\S+)")]
    private static partial Regex ListeningLine();
}
