using Granary.Abstractions;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace Granary.Grains;

/// <summary>Places a grain on the silo named by its key's first segment (<see cref="SiloPinnedKey"/>), or nowhere.</summary>
[GenerateSerializer, Immutable, Alias("granary.SiloPinnedPlacement")]
public sealed class SiloPinnedPlacement : PlacementStrategy
{
    public static SiloPinnedPlacement Instance { get; } = new();
}

[AttributeUsage(AttributeTargets.Class, AllowMultiple = false)]
public sealed class SiloPinnedPlacementAttribute() : PlacementAttribute(SiloPinnedPlacement.Instance);

/// <summary>
/// Resolves the silo name in the grain key against the live membership. If no active silo has that name the
/// activation fails with <see cref="SiloNotInClusterException"/>: a shard must never run on another host.
/// </summary>
internal sealed class SiloPinnedPlacementDirector(IClusterMembershipService membership) : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var key = target.GrainIdentity.Key.ToString()!;
        var siloName = SiloPinnedKey.SiloNameOf(key);
        var compatible = context.GetCompatibleSilos(target);
        var active = membership.CurrentSnapshot.Members.Values.Where(member => member.Status == SiloStatus.Active).ToList();
        foreach (var member in active)
        {
            if (string.Equals(member.Name, siloName, StringComparison.Ordinal) && compatible.Contains(member.SiloAddress))
            {
                return Task.FromResult(member.SiloAddress);
            }
        }

        var known = active.Count == 0 ? "none" : string.Join(", ", active.Select(member => member.Name).Order(StringComparer.Ordinal));
        throw new SiloNotInClusterException(
            siloName,
            $"Grain {target.GrainIdentity} is pinned to silo '{siloName}', which is not an active member of the cluster (active silos: {known}).");
    }
}
