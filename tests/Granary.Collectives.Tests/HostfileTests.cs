namespace Granary.Collectives.Tests;

public class HostfileTests
{
    private const string MlxExample = """
        [
          {"ssh": "m3-ultra-0", "ips": ["192.168.1.10"], "rdma": [null, "rdma_en5", "rdma_en4"]},
          {"ssh": "m3-ultra-1", "ips": ["192.168.1.11", "10.0.0.2"], "rdma": ["rdma_en5", null, "rdma_en3"]},
          {"ssh": "m3-ultra-2", "ips": ["192.168.1.12"], "rdma": ["rdma_en4", "rdma_en3", null]}
        ]
        """;

    [Fact]
    public void ParsesTheMlxFormat()
    {
        var hosts = Hostfile.Parse(MlxExample);
        Assert.Equal(3, hosts.Count);
        Assert.Equal("m3-ultra-1", hosts[1].Ssh);
        Assert.Equal(["192.168.1.11", "10.0.0.2"], hosts[1].Ips);
        Assert.Equal([null, "rdma_en5", "rdma_en4"], hosts[0].Rdma!);
    }

    [Fact]
    public void RdmaIsOptional()
    {
        var hosts = Hostfile.Parse("""[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": []}]""");
        Assert.Null(hosts[0].Rdma);
        Assert.Empty(hosts[1].Ips);
    }

    [Fact]
    public void FormatRoundTrips()
    {
        var hosts = Hostfile.Parse(MlxExample);
        var again = Hostfile.Parse(Hostfile.Format(hosts));
        Assert.Equal(hosts.Count, again.Count);
        for (var i = 0; i < hosts.Count; i++)
        {
            Assert.Equal(hosts[i].Ssh, again[i].Ssh);
            Assert.Equal(hosts[i].Ips, again[i].Ips);
            Assert.Equal(hosts[i].Rdma!, again[i].Rdma!);
        }
    }

    [Theory]
    [InlineData("[\n{\"ssh\": \"a\", \"ips\": [\"10.0.0.1\"]},\n{\"ssh\": \"b\" \"ips\": []}\n]", "line 3")]
    [InlineData("""[{"ips": ["10.0.0.1"]}]""", "host 0: missing field \"ssh\"")]
    [InlineData("""[{"ssh": "a", "ips": ["10.0.0.1"]}, {"ssh": "b", "ips": "10.0.0.2"}]""", "host 1: field \"ips\" must be a list")]
    [InlineData("""[{"ssh": "a", "ips": ["not-an-ip"]}]""", "\"not-an-ip\", which is not an IP address")]
    [InlineData("""[{"ssh": "a", "ips": [], "rdma": [null, "x"]}]""", "field \"rdma\" has 2 entries, expected one per host (1)")]
    [InlineData("""[{"ssh": "a", "ipz": []}]""", "unknown field \"ipz\"")]
    [InlineData("""{"ssh": "a"}""", "expected a JSON list of hosts")]
    [InlineData("[]", "empty")]
    public void BadHostfilesNameTheProblem(string json, string expected)
    {
        var error = Assert.Throws<FormatException>(() => Hostfile.Parse(json, "hosts.json"));
        Assert.Contains(expected, error.Message);
        Assert.StartsWith("hosts.json", error.Message);
    }

    [Fact]
    public void EnvironmentWithHostfileGivesSizeAndCoordinator()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, MlxExample);
            var options = CollectiveOptions.FromEnvironment(new Dictionary<string, string>
            {
                [DistributedEnvironment.Hostfile] = path,
                [DistributedEnvironment.Rank] = "2",
                [DistributedEnvironment.Backend] = "ring",
                [DistributedEnvironment.TimeoutMilliseconds] = "1500",
            });
            Assert.NotNull(options);
            Assert.Equal(3, options.WorldSize);
            Assert.Equal(2, options.Rank);
            Assert.Equal($"192.168.1.10:{CollectiveOptions.DefaultCoordinatorPort}", options.Coordinator);
            Assert.Equal("ring", options.Backend);
            Assert.Equal(TimeSpan.FromMilliseconds(1500), options.Timeout);
            options.Validate();
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void NoEnvironmentMeansNoGroup() => Assert.Null(CollectiveOptions.FromEnvironment(new Dictionary<string, string>()));

    [Fact]
    public void InvalidOptionsAreRejectedByName()
    {
        Assert.Contains("Rank", Assert.Throws<ArgumentException>(() => new CollectiveOptions { Rank = 3, WorldSize = 3 }.Validate()).Message);
        Assert.Contains("SocketsPerPeer", Assert.Throws<ArgumentException>(() => new CollectiveOptions { SocketsPerPeer = 0 }.Validate()).Message);
        Assert.Contains("host:port", Assert.Throws<ArgumentException>(() => new CollectiveOptions { Coordinator = "nohost" }.Validate()).Message);
    }
}
