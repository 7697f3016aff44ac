using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Granary.Models.Generation;

namespace Granary.Gateway.Tests;

[Collection(GatewayCollection.Name)]
public sealed class CompletionTests(GatewayFixture fixture)
{
    private const string Question = "Tell me about the harvest in the village.";

    [Fact]
    public async Task Chat_answer_equals_the_engines_greedy_run_with_its_usage()
    {
        using var engine = new DirectEngine(fixture.ChatModelDirectory);
        var promptIds = engine.EncodeChat(("system", "You are terse."), ("user", Question));
        var expected = engine.Generate(promptIds, 12, SamplingOptions.Greedy);

        var request = new JsonObject
        {
            ["model"] = TestModels.Chat,
            ["messages"] = new JsonArray(
                new JsonObject { ["role"] = "system", ["content"] = "You are terse." },
                new JsonObject { ["role"] = "user", ["content"] = new JsonArray(new JsonObject { ["type"] = "text", ["text"] = Question }) }),
            ["max_tokens"] = 12,
            ["temperature"] = 0,
            ["return_token_ids"] = true,
        };
        var (status, body, contentType) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("application/json", contentType);
        Assert.StartsWith("chatcmpl-", body["id"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal("chat.completion", body["object"]!.GetValue<string>());
        Assert.Equal(TestModels.Chat, body["model"]!.GetValue<string>());
        var choice = Assert.Single(body["choices"]!.AsArray())!;
        Assert.Equal(expected.Tokens, Http.Ints(choice["token_ids"]));
        Assert.Equal("assistant", choice["message"]!["role"]!.GetValue<string>());
        Assert.Equal(expected.Text, choice["message"]!["content"]!.GetValue<string>());
        Assert.Equal("length", choice["finish_reason"]!.GetValue<string>());
        Assert.Equal(12, expected.Tokens.Length);
        Assert.Equal((promptIds.Length, 12, promptIds.Length + 12), Usage(body));
    }

    [Fact]
    public async Task Completion_of_token_ids_equals_the_transformers_greedy_tokens()
    {
        var (promptIds, greedy) = TestModels.ReferenceTokens();
        var request = new JsonObject
        {
            ["model"] = TestModels.Reference,
            ["prompt"] = new JsonArray([.. promptIds.Select(id => (JsonNode)id)]),
            ["max_tokens"] = greedy.Length,
            ["temperature"] = 0,
            ["ignore_eos"] = true,
            ["return_token_ids"] = true,
        };
        var (status, body, _) = await Http.PostAsync(fixture.Http, "/v1/completions", request);

        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", body["object"]!.GetValue<string>());
        var choice = Assert.Single(body["choices"]!.AsArray())!;
        Assert.Equal(greedy, Http.Ints(choice["token_ids"]));
        Assert.Equal((promptIds.Length, greedy.Length, promptIds.Length + greedy.Length), Usage(body));
    }

    [Fact]
    public async Task Streamed_chat_has_the_openai_chunk_format_and_ends_with_usage_and_done()
    {
        var request = Http.Chat(Question, 10);
        var (_, whole, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);
        var wholeText = whole["choices"]![0]!["message"]!["content"]!.GetValue<string>();

        request["stream"] = true;
        request["stream_options"] = new JsonObject { ["include_usage"] = true };
        var (contentType, events) = await Http.StreamAsync(fixture.Http, "/v1/chat/completions", request);

        Assert.Equal("text/event-stream", contentType);
        var id = events[0]["id"]!.GetValue<string>();
        Assert.StartsWith("chatcmpl-", id, StringComparison.Ordinal);
        Assert.All(events, chunk =>
        {
            Assert.Equal(id, chunk["id"]!.GetValue<string>());
            Assert.Equal("chat.completion.chunk", chunk["object"]!.GetValue<string>());
            Assert.Equal(TestModels.Chat, chunk["model"]!.GetValue<string>());
        });
        Assert.Equal("assistant", events[0]["choices"]![0]!["delta"]!["role"]!.GetValue<string>());

        var usage = events[^1];
        Assert.Empty(usage["choices"]!.AsArray());
        Assert.Equal(whole["usage"]!.ToJsonString(), usage["usage"]!.ToJsonString());

        var final = events[^2]["choices"]![0]!;
        Assert.Equal("length", final["finish_reason"]!.GetValue<string>());
        Assert.Empty(final["delta"]!.AsObject());

        var middle = events[1..^2];
        Assert.All(middle, chunk => Assert.Null(chunk["choices"]![0]!["finish_reason"]));
        var text = string.Concat(middle.Select(chunk => chunk["choices"]![0]!["delta"]!["content"]!.GetValue<string>()));
        Assert.Equal(wholeText, text);
        Assert.True(middle.Count >= 2, $"Expected the answer in several chunks, got {middle.Count}.");
    }

    [Fact]
    public async Task Streamed_completion_without_include_usage_sends_no_usage()
    {
        var (promptIds, greedy) = TestModels.ReferenceTokens();
        var request = new JsonObject
        {
            ["model"] = TestModels.Reference,
            ["prompt"] = new JsonArray(new JsonArray([.. promptIds.Select(id => (JsonNode)id)])),
            ["max_tokens"] = 6,
            ["temperature"] = 0,
            ["ignore_eos"] = true,
            ["stream"] = true,
            ["return_token_ids"] = true,
        };
        var (_, events) = await Http.StreamAsync(fixture.Http, "/v1/completions", request);

        Assert.All(events, chunk =>
        {
            Assert.Equal("text_completion", chunk["object"]!.GetValue<string>());
            Assert.Null(chunk["usage"]);
        });
        var tokens = events[..^1].SelectMany(chunk => Http.Ints(chunk["choices"]![0]!["token_ids"])).ToArray();
        Assert.Equal(greedy[..6], tokens);
        Assert.Equal("length", events[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>());
    }

    [Fact]
    public async Task A_stop_string_ends_the_answer_before_it()
    {
        using var engine = new DirectEngine(fixture.ChatModelDirectory);
        var promptIds = engine.EncodeChat(("user", Question));
        var free = engine.Generate(promptIds, 24, SamplingOptions.Greedy).Text;
        // A stop string taken from the middle of the free answer: the answer must end just before it.
        var at = free.Length / 2;
        var stop = free.Substring(at, Math.Min(3, free.Length - at));
        var cut = free.IndexOf(stop, StringComparison.Ordinal);
        Assert.True(cut >= 0 && stop.Length > 0, $"no stop string in '{free}'");

        foreach (var stream in new[] { false, true })
        {
            var request = Http.Chat(Question, 24);
            request["stop"] = new JsonArray("never-in-this-answer-\u00e9", stop);
            request["stream"] = stream;
            string text, finish;
            if (stream)
            {
                var (_, events) = await Http.StreamAsync(fixture.Http, "/v1/chat/completions", request);
                text = string.Concat(events[1..^1].Select(chunk => chunk["choices"]![0]!["delta"]!["content"]!.GetValue<string>()));
                finish = events[^1]["choices"]![0]!["finish_reason"]!.GetValue<string>();
            }
            else
            {
                var (status, body, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);
                Assert.Equal(HttpStatusCode.OK, status);
                text = body["choices"]![0]!["message"]!["content"]!.GetValue<string>();
                finish = body["choices"]![0]!["finish_reason"]!.GetValue<string>();
            }

            Assert.Equal(free[..cut], text);
            Assert.Equal("stop", finish);
        }

        // A single string works as well as an array.
        var single = Http.Chat(Question, 24);
        single["stop"] = stop;
        var (_, singleBody, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", single);
        Assert.Equal(free[..cut], singleBody["choices"]![0]!["message"]!["content"]!.GetValue<string>());
    }

    [Fact]
    public async Task The_same_seed_samples_the_same_tokens_and_another_seed_others()
    {
        async Task<int[]> SampleAsync(int seed)
        {
            var request = Http.Chat(Question, 16);
            request["temperature"] = 1.0;
            request["seed"] = seed;
            request["return_token_ids"] = true;
            var (status, body, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);
            Assert.Equal(HttpStatusCode.OK, status);
            return Http.Ints(body["choices"]![0]!["token_ids"]);
        }

        var first = await SampleAsync(7);
        Assert.Equal(first, await SampleAsync(7));
        Assert.NotEqual(first, await SampleAsync(8));

        // The engine with the same seed agrees (top_k 50 is the default of a generation_config.json without one).
        using var engine = new DirectEngine(fixture.ChatModelDirectory);
        var expected = engine.Generate(engine.EncodeChat(("user", Question)), 16, new SamplingOptions { Temperature = 1.0f, TopK = 50, Seed = 7 });
        Assert.Equal(expected.Tokens, first);
    }

    [Fact]
    public async Task Models_health_and_metrics_describe_the_gateway_and_the_cluster()
    {
        var models = System.Text.Json.Nodes.JsonNode.Parse(await fixture.Http.GetStringAsync("/v1/models"))!;
        Assert.Equal("list", models["object"]!.GetValue<string>());
        Assert.Equal(
            TestModels.ServedNames,
            models["data"]!.AsArray().Select(model => model!["id"]!.GetValue<string>()));
        Assert.All(models["data"]!.AsArray(), model => Assert.Equal("model", model!["object"]!.GetValue<string>()));

        var health = System.Text.Json.Nodes.JsonNode.Parse(await fixture.Http.GetStringAsync("/health"))!;
        Assert.Equal(("ok", 1), (health["status"]!.GetValue<string>(), health["active_silos"]!.GetValue<int>()));

        const string Chat200 = "granary_gateway_requests_total{route=\"/v1/chat/completions\",status=\"200\"}";
        const string Chat400 = "granary_gateway_requests_total{route=\"/v1/chat/completions\",status=\"400\"}";
        const string Prompt = "granary_gateway_prompt_tokens_total{model=\"tiny-chat\"}";
        const string Completion = "granary_gateway_completion_tokens_total{model=\"tiny-chat\"}";
        const string FirstTokens = "granary_gateway_time_to_first_token_seconds_count{model=\"tiny-chat\"}";
        const string Gaps = "granary_gateway_inter_token_latency_seconds_count{model=\"tiny-chat\"}";
        string[] series = [Chat200, Chat400, Prompt, Completion, FirstTokens, Gaps];
        var before = await Task.WhenAll(series.Select(name => Http.MetricAsync(fixture.Http, name)));

        var (_, body, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", Http.Chat(Question, 9));
        var bad = Http.Chat(Question, 9);
        bad["n"] = 3;
        await Http.PostAsync(fixture.Http, "/v1/chat/completions", bad);

        var after = await Task.WhenAll(series.Select(name => Http.MetricAsync(fixture.Http, name)));
        var (prompt, completion, _) = Usage(body);
        Assert.Equal(new double[] { 1, 1, prompt, completion, 1, completion - 1 }, after.Zip(before, (a, b) => a - b));

        var text = await fixture.Http.GetStringAsync("/metrics");
        var silo = fixture.Cluster.Primary!;
        Assert.Contains($"granary_silo_up{{silo=\"{silo.Name}\",address=\"{silo.SiloAddress.Endpoint}\",status=\"Active\"}} 1\n", text, StringComparison.Ordinal);
        Assert.Contains("granary_cluster_status_up 1\n", text, StringComparison.Ordinal);
        Assert.Contains("granary_gateway_requests_in_flight 0\n", text, StringComparison.Ordinal);
        Assert.Contains("granary_gateway_queue_depth 0\n", text, StringComparison.Ordinal);
        Assert.Contains("# TYPE granary_gateway_time_to_first_token_seconds histogram\n", text, StringComparison.Ordinal);
        Assert.Contains("granary_gateway_time_to_first_token_seconds_bucket{model=\"tiny-chat\",le=\"+Inf\"}", text, StringComparison.Ordinal);
        Assert.Matches(@"granary_silo_shards\{silo=""[^""]+""\} [1-9]", text);
    }

    [Fact]
    public async Task A_repeated_prompt_reuses_the_cached_prefix_and_metrics_count_it()
    {
        var silo = fixture.Cluster.Primary!.Name;
        var hits = $"granary_silo_prompt_cache_hits_total{{silo=\"{silo}\"}}";
        var hitTokens = $"granary_silo_prompt_cache_hit_tokens_total{{silo=\"{silo}\"}}";
        var request = Http.Chat("Which field ripens first this year?", 4);
        var (_, first, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);
        var (hitsBefore, tokensBefore) = (await Http.MetricAsync(fixture.Http, hits), await Http.MetricAsync(fixture.Http, hitTokens));

        var (_, second, _) = await Http.PostAsync(fixture.Http, "/v1/chat/completions", request);

        var (hitsAfter, tokensAfter) = (await Http.MetricAsync(fixture.Http, hits), await Http.MetricAsync(fixture.Http, hitTokens));
        var prompt = Usage(second).Prompt;
        Assert.True(hitsAfter - hitsBefore >= 1, $"prompt-cache hits went from {hitsBefore} to {hitsAfter}");
        // The whole prompt but its last token comes from the cache (that token is run again for its logits).
        Assert.True(tokensAfter - tokensBefore >= prompt - 1, $"{tokensAfter - tokensBefore} cached prompt tokens for a prompt of {prompt}");
        Assert.Equal(first["choices"]![0]!["message"]!["content"]!.GetValue<string>(), second["choices"]![0]!["message"]!["content"]!.GetValue<string>());
        Assert.Matches($@"granary_silo_batch_size\{{silo=""{silo}""\}} \d", await fixture.Http.GetStringAsync("/metrics"));
    }

    private static (int Prompt, int Completion, int Total) Usage(JsonNode body) =>
        (body["usage"]!["prompt_tokens"]!.GetValue<int>(), body["usage"]!["completion_tokens"]!.GetValue<int>(), body["usage"]!["total_tokens"]!.GetValue<int>());
}
