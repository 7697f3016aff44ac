using Granary.Abstractions;
using Orleans.Runtime;

namespace Granary.Grains;

[SiloPinnedPlacement]
internal sealed class HostAgentGrain(ModelHost host, ILocalSiloDetails localSilo) : Grain, IHostAgentGrain
{
    // The name of the silo this activation really runs on, which placement makes equal to the key.
    private string SiloName => localSilo.Name;

    public Task<HostReport> GetReportAsync() => Task.FromResult(new HostReport(
        SiloName,
        host.BackendName,
        host.GetMemory(),
        [.. host.LoadedShards().Select(shard => shard.ToStatus())],
        [.. host.CurrentWork()],
        host.ModelLoads));

    // Resolving "builtin" may write the model on first use: off the grain's turn.
    public Task<ModelProbe> ProbeModelAsync(string model) => Task.Run(() => host.Probe(SiloName, model));
}
