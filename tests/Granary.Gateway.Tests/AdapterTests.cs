using System.Net;
using System.Text.Json.Nodes;
using Granary.Grains;
using Granary.Models.Generation;
using Granary.Training;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Granary.Gateway.Tests;

/// <summary>A served model whose reference carries adapters ("{model}@adapters={folder}"): the silo merges them on load.</summary>
[Collection(GatewayCollection.Name)]
public sealed class AdapterTests(GatewayFixture fixture)
{
    private const int MaxTokens = 12;
    private static readonly int[] s_promptIds = [1201, 87, 1040, 512, 9];

    [Fact]
    public async Task Adapted_model_answers_with_the_greedy_tokens_of_the_locally_merged_model_not_the_base_model()
    {
        var fused = Path.Combine(Path.GetTempPath(), $"granary-gateway-adapter-test-{Guid.NewGuid():N}");
        try
        {
            ModelFusion.Fuse(fixture.ChatModelDirectory, GatewayFixture.AdapterDirectory, fused);
            int[] adapted, baseline;
            using (var engine = new DirectEngine(fused))
            {
                adapted = engine.Generate(s_promptIds, MaxTokens, SamplingOptions.Greedy).Tokens;
            }

            using (var engine = new DirectEngine(fixture.ChatModelDirectory))
            {
                baseline = engine.Generate(s_promptIds, MaxTokens, SamplingOptions.Greedy).Tokens;
            }

            Assert.Equal(MaxTokens, adapted.Length);
            Assert.NotEqual(baseline, adapted);
            Assert.Equal(adapted, await GreedyTokensAsync(TestModels.Adapted, fixture.Http));
            Assert.Equal(baseline, await GreedyTokensAsync(TestModels.Chat, fixture.Http));
            // Asked again (the shard stays loaded) and from the gateway outside the silo: one merge in all.
            using var keyed = fixture.WithKey(GatewayFixture.ApiKey);
            Assert.Equal(adapted, await GreedyTokensAsync(TestModels.Adapted, keyed));
            Assert.Equal(1, ModelHost().AdapterMerges);
            Assert.Single(Directory.GetDirectories(GatewayFixture.FusedDirectory));
        }
        finally
        {
            Directory.Delete(fused, recursive: true);
        }
    }

    [Fact]
    public async Task Missing_adapter_folder_is_a_503_naming_the_folder()
    {
        var (status, body, _) = await Http.PostAsync(fixture.Http, "/v1/completions", Request(TestModels.MissingAdapters));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
        var error = body["error"]!;
        Assert.Equal("model_unavailable", error["code"]!.GetValue<string>());
        var message = error["message"]!.GetValue<string>();
        Assert.Contains("no-such-adapters", message, StringComparison.Ordinal);
        Assert.Contains("does not exist", message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Adapters_that_do_not_fit_the_model_are_a_503_saying_so()
    {
        var (status, body, _) = await Http.PostAsync(fixture.Http, "/v1/completions", Request(TestModels.MisfitAdapters));

        Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
        var error = body["error"]!;
        Assert.Equal("model_unavailable", error["code"]!.GetValue<string>());
        var message = error["message"]!.GetValue<string>();
        Assert.Contains("misfit-adapters", message, StringComparison.Ordinal);
        Assert.Contains("do not fit the model", message, StringComparison.Ordinal);
    }

    private static JsonObject Request(string model) => new()
    {
        ["model"] = model,
        ["prompt"] = new JsonArray([.. s_promptIds.Select(id => (JsonNode)id)]),
        ["max_tokens"] = MaxTokens,
        ["temperature"] = 0,
        ["ignore_eos"] = true,
        ["return_token_ids"] = true,
    };

    private static async Task<int[]> GreedyTokensAsync(string model, HttpClient http)
    {
        var (status, body, _) = await Http.PostAsync(http, "/v1/completions", Request(model));
        Assert.True(status == HttpStatusCode.OK, Http.Pretty(body));
        return Http.Ints(Assert.Single(body["choices"]!.AsArray())!["token_ids"]);
    }

    private ModelHost ModelHost() => ((InProcessSiloHandle)fixture.Cluster.Primary!).SiloHost.Services.GetRequiredService<ModelHost>();
}
