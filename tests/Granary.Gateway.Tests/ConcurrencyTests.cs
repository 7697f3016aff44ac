using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Granary.Client;

namespace Granary.Gateway.Tests;

[Collection(GatewayCollection.Name)]
public sealed class ConcurrencyTests(GatewayFixture fixture)
{
    private const string Aborted = "granary_gateway_requests_total{route=\"/v1/chat/completions\",status=\"499\"}";

    [Fact]
    public async Task A_client_that_goes_away_cancels_its_generation_on_the_silo()
    {
        var client = new GranaryClient(fixture.Cluster.Client);
        var abortedBefore = await Http.MetricAsync(fixture.Http, Aborted);
        // The built-in model at one thread needs minutes for these tokens; only cancellation ends it in time.
        var request = Http.Chat("Tell me a long story.", 4000, TestModels.BuiltIn);
        request["ignore_eos"] = true;
        request["stream"] = true;

        using (var message = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions"))
        {
            message.Content = new StringContent(request.ToJsonString(), Encoding.UTF8, "application/json");
            using var response = await fixture.Http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            // The role chunk, then the first content chunk: the generation is running.
            Assert.StartsWith("data: ", await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)), StringComparison.Ordinal);
            Assert.Equal("", await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)));
            Assert.StartsWith("data: ", await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(60)), StringComparison.Ordinal);
            Assert.Contains(await RunningJobsAsync(client), work => work.Model == TestModels.BuiltIn);
        }

        // Leaving the using closed the connection mid-stream.
        var clock = Stopwatch.StartNew();
        await WaitUntilIdleAsync(client);
        while (await Http.MetricAsync(fixture.Http, Aborted) == abortedBefore)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), "The aborted request was not counted.");
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Requests_do_not_wait_for_each_other_in_the_gateway()
    {
        // A slow generation on the built-in model holds its shard; requests for the other models, which live on
        // other shards, must finish while it runs: the gateway itself must not serialize them.
        var slow = Http.Chat("Tell me a long story.", 4000, TestModels.BuiltIn);
        slow["ignore_eos"] = true;
        slow["stream"] = true;
        using var message = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
        {
            Content = new StringContent(slow.ToJsonString(), Encoding.UTF8, "application/json"),
        };
        using var response = await fixture.Http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        try
        {
            var quick = await Task.WhenAll(Enumerable.Range(0, 4).Select(i => Http.PostAsync(fixture.Http, "/v1/chat/completions", Http.Chat($"Question {i}", 8))));
            Assert.All(quick, result => Assert.Equal(HttpStatusCode.OK, result.Status));
            Assert.All(quick, result => Assert.Equal(8, result.Body["usage"]!["completion_tokens"]!.GetValue<int>()));
            Assert.Equal(1, await Http.MetricAsync(fixture.Http, "granary_gateway_requests_in_flight"));
        }
        finally
        {
            response.Dispose();
            await WaitUntilIdleAsync(new GranaryClient(fixture.Cluster.Client));
        }
    }

    /// <summary>Waits until no generation runs on the silo and the gateway has none in flight (a cancelled one ends within a token).</summary>
    private async Task WaitUntilIdleAsync(GranaryClient client)
    {
        var clock = Stopwatch.StartNew();
        while ((await RunningJobsAsync(client)).Length > 0 || await Http.MetricAsync(fixture.Http, "granary_gateway_requests_in_flight") > 0)
        {
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(20), "The silo or the gateway still runs the generation of a client that went away.");
            await Task.Delay(100);
        }
    }

    private static async Task<Abstractions.WorkItem[]> RunningJobsAsync(GranaryClient client)
    {
        var status = await client.StatusAsync().WaitAsync(TimeSpan.FromSeconds(10));
        return [.. status.Silos.SelectMany(silo => silo.Host?.Work ?? [])];
    }
}
