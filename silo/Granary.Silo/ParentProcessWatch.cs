using Microsoft.Extensions.Hosting;

namespace Granary.Silo;

/// <summary>Stops the silo once the process that started it is gone, so a launcher that dies leaves no silo behind.</summary>
internal sealed class ParentProcessWatch(int parentProcessId, IHostApplicationLifetime lifetime) : BackgroundService
{
    private static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(500);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        while (await timer.WaitForNextTickAsync(stoppingToken))
        {
            if (!IsRunning(parentProcessId))
            {
                lifetime.StopApplication();
                return;
            }
        }
    }

    private static bool IsRunning(int processId)
    {
        try
        {
            using var process = System.Diagnostics.Process.GetProcessById(processId);
            return !process.HasExited;
        }
        catch (ArgumentException)
        {
            return false;
        }
    }
}
