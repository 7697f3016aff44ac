using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Granary.Gateway.Tests;

/// <summary>Small HTTP helpers: JSON posts and the parsing of an OpenAI event stream.</summary>
internal static class Http
{
    public static async Task<(HttpStatusCode Status, JsonNode Body, string ContentType)> PostAsync(HttpClient http, string path, string json)
    {
        using var content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(path, content);
        var text = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, JsonNode.Parse(text)!, response.Content.Headers.ContentType?.MediaType ?? "");
    }

    public static Task<(HttpStatusCode Status, JsonNode Body, string ContentType)> PostAsync(HttpClient http, string path, JsonObject body) =>
        PostAsync(http, path, body.ToJsonString());

    /// <summary>
    /// Posts a streaming request and splits the body into its events, checking the framing on the way: every event
    /// is one "data: " line followed by a blank line, and the last one is [DONE].
    /// </summary>
    public static async Task<(string ContentType, List<JsonNode> Events)> StreamAsync(HttpClient http, string path, JsonObject body)
    {
        using var content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(path, content);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var text = await response.Content.ReadAsStringAsync();
        Assert.EndsWith("data: [DONE]\n\n", text, StringComparison.Ordinal);
        var events = new List<JsonNode>();
        var blocks = text[..^"data: [DONE]\n\n".Length].Split("\n\n");
        Assert.Equal("", blocks[^1]);
        foreach (var block in blocks[..^1])
        {
            Assert.StartsWith("data: ", block, StringComparison.Ordinal);
            Assert.DoesNotContain('\n', block);
            events.Add(JsonNode.Parse(block["data: ".Length..])!);
        }

        return (response.Content.Headers.ContentType?.MediaType ?? "", events);
    }

    public static int[] Ints(JsonNode? array) => [.. array!.AsArray().Select(item => item!.GetValue<int>())];

    public static JsonObject Chat(string content, int maxTokens, string model = TestModels.Chat) => new()
    {
        ["model"] = model,
        ["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = content }),
        ["max_tokens"] = maxTokens,
        ["temperature"] = 0,
    };

    /// <summary>The request counted by /metrics for a series, e.g. granary_gateway_requests_total{route="/health",status="200"}; 0 when absent.</summary>
    public static async Task<double> MetricAsync(HttpClient http, string series)
    {
        var text = await http.GetStringAsync("/metrics");
        foreach (var line in text.Split('\n'))
        {
            if (line.StartsWith(series + " ", StringComparison.Ordinal))
            {
                return double.Parse(line[(series.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
            }
        }

        return 0;
    }

    public static string Pretty(JsonNode node) => node.ToJsonString(new JsonSerializerOptions { WriteIndented = true });
}
