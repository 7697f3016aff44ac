using Granary.Client;
using Granary.Silo;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace Granary.Runtime.Tests;

public sealed class OptionsTests
{
    [Fact]
    public void Silo_defaults_are_valid_and_each_bad_setting_is_named()
    {
        var validator = new GranarySiloOptionsValidator();
        Assert.True(validator.Validate(null, new GranarySiloOptions()).Succeeded);

        var bad = new GranarySiloOptions
        {
            SiloName = "a/b",
            SiloPort = 0,
            GatewayPort = 70000,
            AdvertisedAddress = "not-an-ip",
            Membership = new MembershipSettings { Provider = MembershipSettings.Postgres },
            Coordinator = new Grains.CoordinatorOptions { MaxShards = 0, DataPlaneTimeout = TimeSpan.Zero },
        };
        var failure = validator.Validate(null, bad).FailureMessage;
        foreach (var expected in new[] { "SiloName 'a/b'", "SiloPort", "GatewayPort", "AdvertisedAddress", "ConnectionString", "Coordinator: MaxShards", "DataPlaneTimeout" })
        {
            Assert.Contains(expected, failure, StringComparison.Ordinal);
        }

        var unknown = validator.Validate(null, new GranarySiloOptions { Membership = new MembershipSettings { Provider = "zookeeper" } });
        Assert.Contains("zookeeper", unknown.FailureMessage, StringComparison.Ordinal);
    }

    [Fact]
    public void The_client_rejects_bad_settings_when_it_is_registered()
    {
        var error = Assert.Throws<OptionsValidationException>(() => new ServiceCollection().AddGranaryClient(options => options.Gateways = ["nowhere"]));
        Assert.Contains("nowhere", error.Message, StringComparison.Ordinal);
        Assert.Throws<OptionsValidationException>(() => new ServiceCollection().AddGranaryClient(options => options.Membership = GranaryClientOptions.Postgres));
    }

    [Fact]
    public void Failure_detection_declares_a_silo_dead_in_seconds()
    {
        var membership = new Orleans.Configuration.ClusterMembershipOptions();
        FailureDetection.Apply(membership);
        var suspicion = membership.ProbeTimeout * membership.NumMissedProbesLimit;
        Assert.True(suspicion <= TimeSpan.FromSeconds(3), $"A peer is suspected only after {suspicion}.");
        Assert.True(membership.DeathVoteExpirationTimeout > suspicion * 2);
    }
}
