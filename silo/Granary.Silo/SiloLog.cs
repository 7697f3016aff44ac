using Microsoft.Extensions.Logging;

namespace Granary.Silo;

internal static partial class SiloLog
{
    /// <summary>Launchers and tests wait for this line.</summary>
    [LoggerMessage(Level = LogLevel.Information, Message = "Granary silo {SiloName} ready: cluster {ClusterId}, silo port {SiloPort}, gateway port {GatewayPort}, membership {Provider}")]
    public static partial void Ready(ILogger logger, string siloName, string clusterId, int siloPort, int gatewayPort, string provider);

    [LoggerMessage(Level = LogLevel.Information, Message = "Granary silo {SiloName} stopping: leaving the cluster")]
    public static partial void Stopping(ILogger logger, string siloName);
}
