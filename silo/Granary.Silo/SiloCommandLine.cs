namespace Granary.Silo;

/// <summary>Short command-line switches for the settings of the "Granary" section.</summary>
internal static class SiloCommandLine
{
    public static readonly Dictionary<string, string> SwitchMappings = new(StringComparer.OrdinalIgnoreCase)
    {
        ["--cluster-id"] = "Granary:ClusterId",
        ["--service-id"] = "Granary:ServiceId",
        ["--silo-name"] = "Granary:SiloName",
        ["--silo-port"] = "Granary:SiloPort",
        ["--gateway-port"] = "Granary:GatewayPort",
        ["--advertised-address"] = "Granary:AdvertisedAddress",
        ["--model-dir"] = "Granary:ModelDirectory",
        ["--backend"] = "Granary:Backend",
        ["--threads"] = "Granary:Threads",
        ["--memory-limit"] = "Granary:MemoryLimitBytes",
        ["--membership"] = "Granary:Membership:Provider",
        ["--primary-silo"] = "Granary:Membership:PrimarySiloEndpoint",
        ["--connection"] = "Granary:Membership:ConnectionString",
        ["--layout"] = "Granary:Coordinator:Layout",
        ["--max-shards"] = "Granary:Coordinator:MaxShards",
        ["--failover-timeout"] = "Granary:Coordinator:FailoverTimeout",
        ["--parent-pid"] = "Granary:ParentProcessId",
        ["--gateway-http-port"] = "Granary:Gateway:Port",
    };

    public static void PrintUsage(TextWriter writer)
    {
        writer.WriteLine("usage: Granary.Silo [--option value ...]");
        writer.WriteLine("Settings come from appsettings.json, then GRANARY__* environment variables (e.g. GRANARY__SILONAME),");
        writer.WriteLine("then these options (or any --Granary:Key value):");
        foreach (var (option, key) in SwitchMappings)
        {
            writer.WriteLine($"  {option,-22} {key}");
        }
    }
}
