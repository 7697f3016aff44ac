using Granary.Grains;
using Microsoft.Extensions.DependencyInjection;
using Orleans.TestingHost;

namespace Granary.Runtime.Tests;

/// <summary>Two in-process silos configured by <typeparamref name="TConfigurator"/>, with access to their model hosts.</summary>
public abstract class TwoInProcessSilos<TConfigurator> : IAsyncLifetime
    where TConfigurator : ISiloConfigurator, new()
{
    public TestCluster Cluster { get; private set; } = null!;

    public IReadOnlyList<string> SiloNames => [.. Cluster.Silos.Select(silo => silo.Name)];

    public async Task InitializeAsync()
    {
        var builder = new TestClusterBuilder(2);
        builder.AddSiloBuilderConfigurator<TConfigurator>();
        Cluster = builder.Build();
        await Cluster.DeployAsync().WaitAsync(TimeSpan.FromMinutes(2));
    }

    public async Task DisposeAsync() => await Cluster.DisposeAsync();

    /// <summary>The model host of the silo called <paramref name="siloName"/>.</summary>
    public ModelHost ModelHostOf(string siloName)
    {
        var silo = Cluster.Silos.OfType<InProcessSiloHandle>().Single(silo => silo.Name == siloName);
        return silo.SiloHost.Services.GetRequiredService<ModelHost>();
    }
}

/// <summary>A two-silo in-process test cluster shared by the tests of one collection.</summary>
public sealed class InProcessCluster : TwoInProcessSilos<InProcessCluster.GranarySiloConfigurator>
{
    public sealed class GranarySiloConfigurator : ISiloConfigurator
    {
        public void Configure(ISiloBuilder siloBuilder) => siloBuilder.AddGranary(modelHost => modelHost.Threads = 1);
    }
}

[CollectionDefinition(Name)]
public sealed class InProcessClusterCollection : ICollectionFixture<InProcessCluster>
{
    public const string Name = "in-process cluster";
}
