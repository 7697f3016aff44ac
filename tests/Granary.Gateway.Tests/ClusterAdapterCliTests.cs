using System.Text.Json.Nodes;
using Granary.Testing;

namespace Granary.Gateway.Tests;

/// <summary>`granary generate --cluster --adapter-path`: the silos merge the adapters; the tokens are a local merged run's.</summary>
[Collection(GatewayCollection.Name)]
public sealed class ClusterAdapterCliTests(GatewayFixture fixture)
{
    private static readonly TimeSpan s_timeout = TimeSpan.FromMinutes(2);

    [Fact]
    public void Generate_on_the_cluster_with_adapters_gives_the_local_adapted_runs_tokens()
    {
        string[] generate =
        [
            "generate", "--model", fixture.ChatModelDirectory, "--adapter-path", GatewayFixture.AdapterDirectory,
            "--prompt-ids", "1201,87,1040,512,9", "--max-tokens", "10", "--no-eos", "--json",
        ];
        var options = fixture.Cluster.Options;
        var local = GranaryCli.Run(s_timeout, [.. generate, "--threads", "1"]);
        var onCluster = GranaryCli.Run(
            s_timeout,
            [.. generate, "--cluster", "--gateway", fixture.Cluster.Primary!.GatewayAddress!.Endpoint.ToString(), "--cluster-id", options.ClusterId, "--service-id", options.ServiceId]);
        var plain = GranaryCli.Run(s_timeout, [.. generate[..3], .. generate[5..], "--threads", "1"]);

        Assert.True(local.ExitCode == 0, local.ToString());
        Assert.True(onCluster.ExitCode == 0, onCluster.ToString());
        Assert.True(plain.ExitCode == 0, plain.ToString());
        var adapted = Tokens(local);
        Assert.Equal(10, adapted.Length);
        Assert.Equal(adapted, Tokens(onCluster));
        Assert.NotEqual(Tokens(plain), adapted);
    }

    private static int[] Tokens(CliResult result)
    {
        var json = JsonNode.Parse(result.Output.TrimEnd().Split('\n')[^1])!;
        return Http.Ints(json["tokens"]);
    }
}
