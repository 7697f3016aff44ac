using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;

namespace Granary.Gateway.Tests;

[Collection(GatewayCollection.Name)]
public sealed class ErrorTests(GatewayFixture fixture)
{
    private const string ChatRoute = "/v1/chat/completions";
    private const string CompletionRoute = "/v1/completions";

    public static TheoryData<string, string, string, int, string?, string?> Cases()
    {
        const string Messages = """ "messages": [{"role": "user", "content": "hi"}] """;
        return new TheoryData<string, string, string, int, string?, string?>
        {
            // name, route, body, status, param, code
            { "bad JSON", ChatRoute, """{"model": "tiny-chat", "messages": [""", 400, null, null },
            { "not an object", ChatRoute, "[1, 2]", 400, null, null },
            { "wrong type", ChatRoute, $$"""{ {{Messages}}, "max_tokens": "ten" }""", 400, "max_tokens", null },
            { "unknown model", ChatRoute, $$"""{"model": "gpt-9", {{Messages}} }""", 404, "model", "model_not_found" },
            { "n of 2", ChatRoute, $$"""{ {{Messages}}, "n": 2 }""", 400, "n", "invalid_value" },
            { "temperature 3", ChatRoute, $$"""{ {{Messages}}, "temperature": 3 }""", 400, "temperature", "invalid_value" },
            { "top_p 0", ChatRoute, $$"""{ {{Messages}}, "top_p": 0 }""", 400, "top_p", "invalid_value" },
            { "max_tokens 0", ChatRoute, $$"""{ {{Messages}}, "max_tokens": 0 }""", 400, "max_tokens", "invalid_value" },
            { "stop a number", ChatRoute, $$"""{ {{Messages}}, "stop": 5 }""", 400, "stop", "invalid_value" },
            { "stop empty", ChatRoute, $$"""{ {{Messages}}, "stop": [""] }""", 400, "stop", "invalid_value" },
            { "seed too big", ChatRoute, $$"""{ {{Messages}}, "seed": 99999999999 }""", 400, "seed", "invalid_value" },
            { "no messages", ChatRoute, """{"messages": []}""", 400, "messages", "invalid_value" },
            { "tool role", ChatRoute, """{"messages": [{"role": "tool", "content": "x"}]}""", 400, "messages[0].role", "invalid_value" },
            { "image part", ChatRoute, """{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}""", 400, "messages[0].content[0]", "unsupported_parameter" },
            { "logprobs", ChatRoute, $$"""{ {{Messages}}, "logprobs": true }""", 400, "logprobs", "unsupported_parameter" },
            { "presence penalty", ChatRoute, $$"""{ {{Messages}}, "presence_penalty": 0.5 }""", 400, "presence_penalty", "unsupported_parameter" },
            { "stream_options without stream", ChatRoute, $$"""{ {{Messages}}, "stream_options": {"include_usage": true} }""", 400, "stream_options", "invalid_value" },
            { "prompt too long", ChatRoute, $$"""{"messages": [{"role": "user", "content": "{{string.Concat(Enumerable.Repeat("harvest ", 300))}}"}]}""", 400, "messages", "context_length_exceeded" },
            { "text prompt without tokenizer", CompletionRoute, """{"model": "tiny-qwen3", "prompt": "hello"}""", 400, "prompt", "invalid_value" },
            { "token id outside the vocabulary", CompletionRoute, """{"model": "tiny-qwen3", "prompt": [1, 2, 9999]}""", 400, null, "invalid_value" },
            { "stop strings without a tokenizer, streamed", CompletionRoute, """{"model": "tiny-qwen3", "prompt": [1, 2, 3], "stop": "x", "stream": true}""", 400, null, "invalid_value" },
            { "batch of prompts", CompletionRoute, """{"prompt": ["a", "b"]}""", 400, "prompt", "unsupported_parameter" },
            { "echo", CompletionRoute, """{"prompt": "a", "echo": true}""", 400, "echo", "unsupported_parameter" },
            { "prompt missing", CompletionRoute, """{"model": "tiny-chat"}""", 400, "prompt", "invalid_value" },
        };
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task Bad_requests_get_openai_errors_with_their_status_param_and_code(string name, string route, string body, int status, string? param, string? code)
    {
        var (actual, error, contentType) = await Http.PostAsync(fixture.Http, route, body);
        AssertError(error, name);
        Assert.True(status == (int)actual, $"{name}: expected {status}, got {(int)actual}: {Http.Pretty(error)}");
        Assert.Equal("application/json", contentType);
        Assert.Equal(param, error["error"]!["param"]?.GetValue<string>());
        Assert.Equal(code, error["error"]!["code"]?.GetValue<string>());
        Assert.Equal(status >= 500 ? "server_error" : "invalid_request_error", error["error"]!["type"]!.GetValue<string>());
    }

    [Fact]
    public async Task A_body_over_the_limit_gets_413_with_or_without_a_content_length()
    {
        var huge = $$"""{"messages": [{"role": "user", "content": "{{new string('a', (int)GatewayFixture.MaxBodyBytes)}}"}]}""";
        var (status, error, _) = await Http.PostAsync(fixture.Http, ChatRoute, huge);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, status);
        AssertError(error, "413");
        Assert.Equal("request_too_large", error["error"]!["code"]!.GetValue<string>());

        // Chunked: the limit is only found while reading.
        using var content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(huge)));
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, ChatRoute) { Content = content };
        request.Headers.TransferEncodingChunked = true;
        using var response = await fixture.Http.SendAsync(request);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        AssertError(JsonNode.Parse(await response.Content.ReadAsStringAsync())!, "413 chunked");
    }

    [Fact]
    public async Task An_unknown_url_gets_an_openai_404()
    {
        using var response = await fixture.Http.GetAsync("/v1/engines");
        Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
        var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!;
        AssertError(error, "404");
        Assert.Equal("unknown_url", error["error"]!["code"]!.GetValue<string>());
    }

    [Fact]
    public async Task The_api_key_is_required_everywhere_but_health()
    {
        using (var response = await fixture.KeyedHttp.GetAsync("/v1/models"))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            var error = JsonNode.Parse(await response.Content.ReadAsStringAsync())!;
            AssertError(error, "401");
            Assert.Equal(("authentication_error", "invalid_api_key"), (error["error"]!["type"]!.GetValue<string>(), error["error"]!["code"]!.GetValue<string>()));
        }

        var (status, _, _) = await Http.PostAsync(fixture.KeyedHttp, ChatRoute, Http.Chat("hi", 2));
        Assert.Equal(HttpStatusCode.Unauthorized, status);

        using var wrong = fixture.WithKey("not-the-key");
        Assert.Equal(HttpStatusCode.Unauthorized, (await wrong.GetAsync("/metrics")).StatusCode);

        using var right = fixture.WithKey(GatewayFixture.ApiKey);
        Assert.Equal(HttpStatusCode.OK, (await right.GetAsync("/v1/models")).StatusCode);
        var (chatStatus, chat, _) = await Http.PostAsync(right, ChatRoute, Http.Chat("hi", 2));
        Assert.Equal(HttpStatusCode.OK, chatStatus);
        Assert.Equal(2, chat["usage"]!["completion_tokens"]!.GetValue<int>());

        Assert.Equal(HttpStatusCode.OK, (await fixture.KeyedHttp.GetAsync("/health")).StatusCode);
    }

    private static void AssertError(JsonNode body, string name)
    {
        var error = body["error"]?.AsObject();
        Assert.True(error is not null, $"{name}: no error object in {body.ToJsonString()}");
        Assert.Equal(["message", "type", "param", "code"], error.Select(property => property.Key));
        Assert.False(string.IsNullOrWhiteSpace(error["message"]!.GetValue<string>()), name);
    }
}
