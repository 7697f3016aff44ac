using System.Net.Http.Headers;
using System.Text.Json.Nodes;
using Granary.Abstractions;
using Granary.Grains;
using Granary.Training;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Granary.Gateway.Tests;

/// <summary>
/// A one-silo in-process test cluster whose silo runs the gateway (as `--gateway-http-port` does), and a second
/// gateway outside the silo, over the cluster's client, that requires an API key (as `granary serve --api-key` does).
/// </summary>
public sealed class GatewayFixture : IAsyncLifetime
{
    public const string ApiKey = "test-key-123";
    public const int MaxPromptTokens = 200;
    public const long MaxBodyBytes = 64 * 1024;

    private static string s_chatModelDirectory = "";
    private WebApplication? _keyedGateway;

    public TestCluster Cluster { get; private set; } = null!;

    public string ChatModelDirectory => s_chatModelDirectory;

    /// <summary>The adapters the <see cref="TestModels.Adapted"/> model is served with.</summary>
    public static string AdapterDirectory => Path.Combine(TestDirectory, "adapters");

    /// <summary>Where the silo keeps models with adapters merged.</summary>
    public static string FusedDirectory => Path.Combine(TestDirectory, "fused");

    private static string TestDirectory => Path.GetDirectoryName(s_chatModelDirectory)!;

    private static string MisfitAdapterDirectory => Path.Combine(TestDirectory, "misfit-adapters");

    /// <summary>The gateway inside the silo.</summary>
    public HttpClient Http { get; private set; } = null!;

    /// <summary>The gateway outside the silo, with an API key; no Authorization header is set.</summary>
    public HttpClient KeyedHttp { get; private set; } = null!;

    public Uri Address => Http.BaseAddress!;

    public async Task InitializeAsync()
    {
        s_chatModelDirectory = Path.Combine(Path.GetTempPath(), $"granary-gateway-tests-{Environment.ProcessId}", TestModels.Chat);
        TestModels.WriteChatModel(s_chatModelDirectory);
        TestModels.WriteAdapters(s_chatModelDirectory, AdapterDirectory, seed: 7);
        TestModels.WriteAdapters(s_chatModelDirectory, MisfitAdapterDirectory, seed: 8);
        var misfitConfig = Path.Combine(MisfitAdapterDirectory, AdapterFiles.ConfigFileName);
        var config = JsonNode.Parse(File.ReadAllText(misfitConfig))!;
        config["lora_parameters"]!["rank"] = 8;
        File.WriteAllText(misfitConfig, config.ToJsonString());

        var builder = new TestClusterBuilder(1);
        // Real sockets: `granary serve` connects to the silo from another process.
        builder.Options.ConnectionTransport = ConnectionTransportType.TcpSocket;
        builder.AddSiloBuilderConfigurator<GatewaySiloConfigurator>();
        Cluster = builder.Build();
        await Cluster.DeployAsync().WaitAsync(TimeSpan.FromMinutes(2));
        var silo = (InProcessSiloHandle)Cluster.Primary!;
        var server = silo.SiloHost.Services.GetRequiredService<GatewayServer>();
        Http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(60) };

        var keyed = new GatewayOptions { Port = 0, ApiKey = ApiKey };
        Configure(keyed);
        _keyedGateway = GatewayApplication.Create(keyed, services => services.AddSingleton(Cluster.Client));
        await _keyedGateway.StartAsync().WaitAsync(TimeSpan.FromSeconds(30));
        KeyedHttp = new HttpClient { BaseAddress = _keyedGateway.Address(), Timeout = TimeSpan.FromSeconds(60) };
    }

    public async Task DisposeAsync()
    {
        Http?.Dispose();
        KeyedHttp?.Dispose();
        if (_keyedGateway is not null)
        {
            await _keyedGateway.StopAsync();
            await _keyedGateway.DisposeAsync();
        }

        await Cluster.DisposeAsync();
        Directory.Delete(Path.GetDirectoryName(s_chatModelDirectory)!, recursive: true);
    }

    public HttpClient WithKey(string key)
    {
        var client = new HttpClient { BaseAddress = KeyedHttp.BaseAddress, Timeout = TimeSpan.FromSeconds(60) };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return client;
    }

    private static void Configure(GatewayOptions options)
    {
        options.Port = 0;
        options.DefaultModel = TestModels.Chat;
        options.Models[TestModels.Chat] = s_chatModelDirectory;
        options.Models[TestModels.Reference] = TestModels.ReferenceDirectory;
        options.Models[TestModels.BuiltIn] = TestModels.BuiltIn;
        options.Models[TestModels.Adapted] = ModelReferences.WithAdapters(s_chatModelDirectory, AdapterDirectory);
        options.Models[TestModels.MissingAdapters] = ModelReferences.WithAdapters(s_chatModelDirectory, Path.Combine(TestDirectory, "no-such-adapters"));
        options.Models[TestModels.MisfitAdapters] = ModelReferences.WithAdapters(s_chatModelDirectory, MisfitAdapterDirectory);
        options.MaxPromptTokens = MaxPromptTokens;
        options.MaxRequestBodyBytes = MaxBodyBytes;
        options.DefaultMaxTokens = 16;
    }

    private sealed class GatewaySiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder)
        {
            siloBuilder.AddGranary(modelHost =>
            {
                modelHost.Threads = 1;
                modelHost.FusedModelDirectory = FusedDirectory;
            });
            siloBuilder.Services.AddGranaryGatewayServer(GatewayFixture.Configure);
        }
    }
}

[CollectionDefinition(Name)]
public sealed class GatewayCollection : ICollectionFixture<GatewayFixture>
{
    public const string Name = "gateway over an in-process cluster";
}
