using Granary.Abstractions;
using Granary.Grains;
using Granary.Models;
using Granary.Models.Generation;
using Granary.Tensors;
using Granary.Training;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Orleans.TestingHost;

namespace Granary.Runtime.Tests;

/// <summary>
/// Two in-process silos that split every model tensor parallel, with the tiny model's seeded LoRA adapters in a
/// temporary folder and the silos' merged copies in another.
/// </summary>
public sealed class AdaptedModelCluster : IAsyncLifetime
{
    private static readonly string s_root = Path.Combine(Path.GetTempPath(), $"granary-adapted-model-tests-{Environment.ProcessId}");

    public static string AdapterDirectory => Path.Combine(s_root, "adapters");

    public static string FusedDirectory => Path.Combine(s_root, "fused");

    public TestCluster Cluster { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        AdaptedModelTests.WriteAdapters(TinyModel.Directory, AdapterDirectory, seed: 11);
        var builder = new TestClusterBuilder(2);
        builder.AddSiloBuilderConfigurator<Configurator>();
        Cluster = builder.Build();
        await Cluster.DeployAsync().WaitAsync(TimeSpan.FromMinutes(2));
    }

    public async Task DisposeAsync()
    {
        await Cluster.DisposeAsync();
        Directory.Delete(s_root, recursive: true);
    }

    public IEnumerable<ModelHost> ModelHosts() =>
        Cluster.Silos.OfType<InProcessSiloHandle>().Select(silo => silo.SiloHost.Services.GetRequiredService<ModelHost>());

    private sealed class Configurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) => siloBuilder.AddGranary(
            modelHost =>
            {
                modelHost.Threads = 1;
                modelHost.FusedModelDirectory = FusedDirectory;
            },
            coordinator =>
            {
                coordinator.Layout = ShardLayout.Tensor;
                coordinator.DataPlaneBackend = "tcp";
            });
    }
}

public sealed class AdaptedModelTests(AdaptedModelCluster fixture) : IClassFixture<AdaptedModelCluster>
{
    private const int MaxTokens = 16;

    [Fact]
    public async Task A_tensor_parallel_plan_of_a_model_with_adapters_streams_the_merged_models_greedy_tokens()
    {
        var reference = ModelReferences.WithAdapters(TinyModel.Directory, AdaptedModelCluster.AdapterDirectory);
        var merged = Path.Combine(Path.GetTempPath(), $"granary-adapted-model-test-{Guid.NewGuid():N}");
        var coordinator = fixture.Cluster.GrainFactory.GetGrain<ICoordinatorGrain>(reference);
        try
        {
            ModelFusion.Fuse(TinyModel.Directory, AdaptedModelCluster.AdapterDirectory, merged);
            var expected = GreedyTokens(merged);
            Assert.NotEqual(GreedyTokens(TinyModel.Directory), expected);

            var plan = await coordinator.LoadAsync();
            Assert.Equal("tensor", plan.Layout);
            Assert.Equal(2, plan.ShardCount);
            Assert.Equal(expected, await SplitRuns.GenerateAsync(coordinator, TinyModel.PromptIds, MaxTokens));

            // Both silos merged once (they share the cache folder here, so one of them may have found the other's copy).
            Assert.InRange(fixture.ModelHosts().Sum(host => host.AdapterMerges), 1, 2);
            Assert.Single(Directory.GetDirectories(AdaptedModelCluster.FusedDirectory));
        }
        finally
        {
            await coordinator.UnloadAsync();
            if (Directory.Exists(merged))
            {
                Directory.Delete(merged, recursive: true);
            }
        }
    }

    [Fact]
    public void A_merged_copy_is_reused_by_later_loads_and_after_a_restart_while_retrained_adapters_are_merged_again()
    {
        var root = Path.Combine(Path.GetTempPath(), $"granary-model-host-adapters-{Guid.NewGuid():N}");
        try
        {
            var adapters = Path.Combine(root, "adapters");
            WriteAdapters(TinyModel.Directory, adapters, seed: 3);
            var options = Options.Create(new ModelHostOptions { Threads = 1, FusedModelDirectory = Path.Combine(root, "fused") });
            var reference = ModelReferences.WithAdapters(TinyModel.Directory, adapters);

            string first;
            using (var host = new ModelHost(options, NullLogger<ModelHost>.Instance))
            {
                first = host.ResolveModelDirectory(reference);
                Assert.Equal(first, host.ResolveModelDirectory(reference));
                Assert.Equal(1, host.AdapterMerges);
                Assert.Equal(GreedyTokens(MergedHere(adapters, root)), GreedyTokens(first));
            }

            using (var restarted = new ModelHost(options, NullLogger<ModelHost>.Instance))
            {
                Assert.Equal(first, restarted.ResolveModelDirectory(reference));
                Assert.Equal(0, restarted.AdapterMerges);

                WriteAdapters(TinyModel.Directory, adapters, seed: 4);
                File.SetLastWriteTimeUtc(Path.Combine(adapters, AdapterFiles.WeightsFileName), DateTime.UtcNow.AddMinutes(1));
                var retrained = restarted.ResolveModelDirectory(reference);
                Assert.NotEqual(first, retrained);
                Assert.Equal(1, restarted.AdapterMerges);
                Assert.Equal(GreedyTokens(MergedHere(adapters, root)), GreedyTokens(retrained));
            }
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    [Fact]
    public void Probes_report_a_missing_or_incomplete_adapter_folder_and_a_bad_reference()
    {
        var root = Path.Combine(Path.GetTempPath(), $"granary-model-host-probe-{Guid.NewGuid():N}");
        try
        {
            var incomplete = Path.Combine(root, "incomplete");
            Directory.CreateDirectory(incomplete);
            File.WriteAllText(Path.Combine(incomplete, AdapterFiles.ConfigFileName), """{"fine_tune_type": "lora", "lora_parameters": {"rank": 4, "scale": 2.0}}""");
            using var host = new ModelHost(Options.Create(new ModelHostOptions { Threads = 1, FusedModelDirectory = Path.Combine(root, "fused") }), NullLogger<ModelHost>.Instance);

            var missing = host.Probe("silo-a", ModelReferences.WithAdapters(TinyModel.Directory, Path.Combine(root, "nowhere")));
            Assert.False(missing.Found);
            Assert.Equal($"Adapter folder '{Path.Combine(root, "nowhere")}' does not exist.", missing.Problem);

            var partial = host.Probe("silo-a", ModelReferences.WithAdapters(TinyModel.Directory, incomplete));
            Assert.False(partial.Found);
            Assert.Equal($"Adapter folder '{incomplete}' has no {AdapterFiles.WeightsFileName}.", partial.Problem);

            var bad = host.Probe("silo-a", TinyModel.Directory + ModelReferences.AdapterSeparator);
            Assert.False(bad.Found);
            Assert.Contains("is not MODEL@adapters=ADAPTER_FOLDER", bad.Problem, StringComparison.Ordinal);

            var good = host.Probe("silo-a", TinyModel.Directory);
            Assert.True(good.Found, good.Problem);
            Assert.False(Directory.Exists(Path.Combine(root, "fused")));
        }
        finally
        {
            Directory.Delete(root, recursive: true);
        }
    }

    /// <summary>Seeded LoRA adapters (rank 4 on q, v, o) for the model, as `granary lora` saves them, with B away from 0.</summary>
    internal static void WriteAdapters(string modelDirectory, string adapterDirectory, int seed)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(modelDirectory, backend);
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions
        {
            Seed = seed,
            Lora = new LoraOptions { Rank = 4, Scale = 2f, Keys = ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj"] },
        });
        var random = new Random(seed);
        foreach (var linear in model.AdaptedLinears.Values.OrderBy(linear => linear.Name, StringComparer.Ordinal))
        {
            foreach (ref var b in linear.Lora!.B.Value.AsSpan())
            {
                b = ((random.NextSingle() * 2) - 1) * 0.5f;
            }
        }

        AdapterFiles.Save(model, adapterDirectory, modelDirectory);
    }

    private static string MergedHere(string adapters, string root)
    {
        var merged = Path.Combine(root, $"merged-{Guid.NewGuid():N}");
        ModelFusion.Fuse(TinyModel.Directory, adapters, merged);
        return merged;
    }

    private static int[] GreedyTokens(string directory)
    {
        using var backend = ComputeBackends.Create("cpu", threads: 1);
        using var loaded = ModelLoader.Load(directory, backend);
        var request = new GenerationRequest
        {
            PromptIds = TinyModel.PromptIds,
            MaxTokens = MaxTokens,
            Sampling = SamplingOptions.Greedy,
            StopAtEndOfSequence = false,
        };
        return [.. new TextGenerator(loaded.Model, loaded.Tokenizer).Generate(request).Where(token => token.HasToken).Select(token => token.Id)];
    }
}
