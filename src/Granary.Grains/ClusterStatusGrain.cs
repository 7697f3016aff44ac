using Granary.Abstractions;
using Orleans.Concurrency;
using Orleans.Runtime;

namespace Granary.Grains;

/// <summary>Gathers every silo's report and the plans of the models their shards belong to.</summary>
[StatelessWorker]
internal sealed class ClusterStatusGrain : Grain, IClusterStatusGrain
{
    private static readonly TimeSpan ReportTimeout = TimeSpan.FromSeconds(5);

    public async Task<ClusterStatus> GetStatusAsync()
    {
        var hosts = await GrainFactory.GetGrain<IManagementGrain>(0).GetDetailedHosts(onlyActive: false);
        // A restarted silo keeps its name under a new address; show only its latest incarnation.
        var latest = hosts
            .GroupBy(entry => entry.SiloName, StringComparer.Ordinal)
            .Select(group => group.OrderByDescending(entry => entry.SiloAddress.Generation).First())
            .OrderBy(entry => entry.SiloName, StringComparer.Ordinal)
            .ToList();
        var silos = await Task.WhenAll(latest.Select(ReportAsync));
        var models = silos
            .SelectMany(silo => silo.Host?.Shards ?? [])
            .Select(shard => shard.Assignment.Shard.Model)
            .Distinct(StringComparer.Ordinal)
            .Order(StringComparer.Ordinal)
            .ToList();
        var plans = await Task.WhenAll(models.Select(model => GrainFactory.GetGrain<ICoordinatorGrain>(model).GetPlanAsync()));
        return new ClusterStatus(silos, [.. plans.OfType<ModelPlan>()], DateTimeOffset.UtcNow);
    }

    private async Task<SiloStatusReport> ReportAsync(MembershipEntry entry)
    {
        var address = entry.SiloAddress.Endpoint.ToString();
        if (entry.Status != SiloStatus.Active)
        {
            return new SiloStatusReport(entry.SiloName, address, entry.Status.ToString(), null, null);
        }

        try
        {
            var report = await GrainFactory.GetGrain<IHostAgentGrain>(entry.SiloName).GetReportAsync().WaitAsync(ReportTimeout);
            return new SiloStatusReport(entry.SiloName, address, entry.Status.ToString(), report, null);
        }
        catch (Exception e) when (e is OrleansException or TimeoutException or SiloNotInClusterException)
        {
            return new SiloStatusReport(entry.SiloName, address, entry.Status.ToString(), null, e.Message);
        }
    }
}
