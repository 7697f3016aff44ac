using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Orleans.Runtime.Placement;

namespace Granary.Grains;

public static class SiloBuilderExtensions
{
    /// <summary>
    /// Adds Granary to a silo: the model host that keeps weights across grain activations, the silo-pinned
    /// placement for shard and host-agent grains, and the coordinator's options.
    /// </summary>
    public static ISiloBuilder AddGranary(
        this ISiloBuilder builder,
        Action<ModelHostOptions>? configureModelHost = null,
        Action<CoordinatorOptions>? configureCoordinator = null)
    {
        var services = builder.Services;
        var modelHost = services.AddOptions<ModelHostOptions>().ValidateOnStart();
        if (configureModelHost is not null)
        {
            modelHost.Configure(configureModelHost);
        }

        var coordinator = services.AddOptions<CoordinatorOptions>().ValidateOnStart();
        if (configureCoordinator is not null)
        {
            coordinator.Configure(configureCoordinator);
        }

        services.TryAddEnumerable(ServiceDescriptor.Singleton<Microsoft.Extensions.Options.IValidateOptions<ModelHostOptions>, ModelHostOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<Microsoft.Extensions.Options.IValidateOptions<CoordinatorOptions>, CoordinatorOptionsValidator>());
        services.TryAddSingleton<ModelHost>();
        services.AddPlacementDirector<SiloPinnedPlacement, SiloPinnedPlacementDirector>();
        return builder;
    }
}
