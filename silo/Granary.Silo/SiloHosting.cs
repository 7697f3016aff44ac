using System.Net;
using Granary.Grains;
using Orleans.Configuration;

namespace Granary.Silo;

public static class SiloHosting
{
    /// <summary>Configures clustering, endpoints, fast failure detection and Granary's grains from <paramref name="options"/>.</summary>
    public static ISiloBuilder UseGranarySilo(this ISiloBuilder silo, GranarySiloOptions options)
    {
        silo.Configure<ClusterOptions>(cluster =>
        {
            cluster.ClusterId = options.ClusterId;
            cluster.ServiceId = options.ServiceId;
        });
        silo.Configure<SiloOptions>(siloOptions => siloOptions.SiloName = options.EffectiveSiloName);
        silo.Configure<ClusterMembershipOptions>(FailureDetection.Apply);

        var advertised = options.AdvertisedAddress.Length > 0 ? IPAddress.Parse(options.AdvertisedAddress) : null;
        if (options.Membership.Provider == MembershipSettings.Postgres)
        {
            silo.UseAdoNetClustering(adoNet =>
            {
                adoNet.Invariant = "Npgsql";
                adoNet.ConnectionString = options.Membership.ConnectionString;
            });
            if (advertised is null)
            {
                silo.ConfigureEndpoints(options.SiloPort, options.GatewayPort);
            }
            else
            {
                silo.ConfigureEndpoints(advertised, options.SiloPort, options.GatewayPort, listenOnAnyHostAddress: true);
            }
        }
        else
        {
            silo.UseDevelopmentClustering(IPEndPoint.Parse(options.Membership.PrimarySiloEndpoint));
            silo.ConfigureEndpoints(advertised ?? IPAddress.Loopback, options.SiloPort, options.GatewayPort, listenOnAnyHostAddress: advertised is not null);
        }

        return silo.AddGranary(modelHost =>
        {
            if (options.ModelDirectory.Length > 0)
            {
                modelHost.ModelDirectory = options.ModelDirectory;
            }

            modelHost.Backend = options.Backend;
            modelHost.Threads = options.Threads;
            modelHost.MemoryLimitBytes = options.MemoryLimitBytes;
        },
        coordinator =>
        {
            var settings = options.Coordinator;
            coordinator.Layout = settings.Layout;
            coordinator.MaxShards = settings.MaxShards;
            coordinator.DataPlaneBackend = settings.DataPlaneBackend;
            coordinator.DataPlaneTimeout = settings.DataPlaneTimeout;
            coordinator.GroupFormationTimeout = settings.GroupFormationTimeout;
            coordinator.ProbeTimeout = settings.ProbeTimeout;
            coordinator.MaxFailovers = settings.MaxFailovers;
            coordinator.FailoverTimeout = settings.FailoverTimeout;
            coordinator.FailoverRetryDelay = settings.FailoverRetryDelay;
        });
    }
}

/// <summary>
/// Membership settings that declare a crashed silo dead in seconds instead of Orleans' defaults (5 s probes, three
/// misses, one-minute table refresh). A silo probes its peers every second; two missed probes make it suspect the
/// peer, and once the needed votes agree the peer is declared dead. A killed process also refuses connections at
/// once, so its probes fail immediately rather than timing out. The process tests SIGKILL a silo mid-generation
/// and require the survivors to finish the answer and to show the silo as dead.
/// </summary>
public static class FailureDetection
{
    public static void Apply(ClusterMembershipOptions options)
    {
        options.ProbeTimeout = TimeSpan.FromSeconds(1);
        options.NumMissedProbesLimit = 2;
        // Votes older than this are dropped; it must outlast the few seconds detection takes.
        options.DeathVoteExpirationTimeout = TimeSpan.FromSeconds(20);
        // How often silos read the membership table: a joining or returning silo is seen within this.
        options.TableRefreshTimeout = TimeSpan.FromSeconds(5);
        options.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(5);
    }
}
