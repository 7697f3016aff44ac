using System.Diagnostics;
using Xunit;

namespace Granary.Testing;

/// <summary>
/// Network namespaces, each joined to one bridge by a veth pair, standing in for separate hosts: namespace i has the
/// address 10.{subnet}.7.{i+1}. Everything made is deleted on Dispose. Needs root and iproute2 (see <see cref="CanCreate"/>).
/// </summary>
internal sealed class NetworkNamespaces(string prefix, int subnet) : IDisposable
{
    private readonly List<string> _names = [];

    /// <summary>The namespaces made so far (names are prefix + "n" + index; interface names must stay under 16 characters).</summary>
    public IReadOnlyList<string> Names => _names;

    private string Bridge => $"{prefix}br";

    public static bool CanCreate(out string reason)
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root")
        {
            reason = "not running as root on Linux";
            return false;
        }

        if (!File.Exists("/usr/sbin/ip") && !File.Exists("/sbin/ip") && !File.Exists("/usr/bin/ip"))
        {
            reason = "the ip command is missing";
            return false;
        }

        reason = "";
        return true;
    }

    public string AddressOf(int index) => $"10.{subnet}.7.{index + 1}";

    /// <summary>
    /// Makes the bridge and <paramref name="count"/> namespaces. With <paramref name="reachableFromHost"/> the bridge gets
    /// the address 10.{subnet}.7.254 too, so this process can reach programs inside the namespaces.
    /// </summary>
    public void Create(int count, bool reachableFromHost)
    {
        Ip($"link add {Bridge} type bridge");
        if (reachableFromHost)
        {
            Ip($"addr add 10.{subnet}.7.254/24 dev {Bridge}");
        }

        Ip($"link set {Bridge} up");
        for (var i = 0; i < count; i++)
        {
            var name = $"{prefix}n{i}";
            _names.Add(name);
            Ip($"netns add {name}");
            Ip($"link add {name}v type veth peer name {name}p");
            Ip($"link set {name}v master {Bridge}");
            Ip($"link set {name}v up");
            Ip($"link set {name}p netns {name}");
            Ip($"-n {name} addr add {AddressOf(i)}/24 dev {name}p");
            Ip($"-n {name} link set {name}p up");
            Ip($"-n {name} link set lo up");
        }
    }

    public void Dispose()
    {
        foreach (var name in _names)
        {
            Ip($"link del {name}v", check: false);
            Ip($"netns del {name}", check: false);
        }

        Ip($"link del {Bridge}", check: false);
    }

    private static void Ip(string arguments, bool check = true)
    {
        var info = new ProcessStartInfo("ip") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var word in arguments.Split(' '))
        {
            info.ArgumentList.Add(word);
        }

        using var process = Process.Start(info)!;
        var error = process.StandardError.ReadToEnd();
        process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(TimeSpan.FromSeconds(10)), $"ip {arguments} hung");
        if (check && process.ExitCode != 0)
        {
            throw new InvalidOperationException($"ip {arguments} failed: {error}");
        }
    }
}
