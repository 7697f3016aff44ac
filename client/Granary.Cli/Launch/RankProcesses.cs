using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Granary.Cli.Launch;

/// <summary>
/// Runs the ranks of a job as child processes with their output prefixed by the rank. Once a rank fails, the others
/// get <c>killGrace</c> to end on their own (they usually fail fast with a collective error worth seeing) before their
/// process groups are killed. The job's exit code is the worst (highest) of the ranks that ended on their own.
/// Ctrl-C or SIGTERM kills all at once.
/// </summary>
internal sealed partial class RankProcesses
{
    private readonly object _outputLock = new();
    private readonly TextWriter _out;
    private readonly TextWriter _error;

    public RankProcesses(TextWriter output, TextWriter error)
    {
        _out = output;
        _error = error;
    }

    public async Task<int> RunAsync(IReadOnlyList<RankCommand> ranks, TimeSpan killGrace, CancellationToken cancel)
    {
        var processes = new List<Process>();
        try
        {
            foreach (var rank in ranks)
            {
                processes.Add(Start(rank));
            }
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            foreach (var started in processes)
            {
                started.Kill(entireProcessTree: true);
            }

            Write(_error, null, $"granary launch: cannot start rank {processes.Count} ({ranks[processes.Count]}): {e.Message}");
            return 127;
        }

        var exits = processes.Select(p => p.WaitForExitAsync(CancellationToken.None)).ToList();
        var killed = new bool[processes.Count];
        var observed = new bool[processes.Count];
        var failed = false;
        var stopAt = DateTime.MaxValue;
        using var cancelled = new CancellationTokenSource();
        using var registration = cancel.Register(cancelled.Cancel);
        while (true)
        {
            // Look before waiting, and wait only on exits not looked at yet: a rank that ends between this look and
            // the wait then wakes the wait at once instead of being dropped from it unnoticed.
            for (var rank = 0; rank < processes.Count; rank++)
            {
                if (observed[rank] || !exits[rank].IsCompleted)
                {
                    continue;
                }

                observed[rank] = true;
                if (!failed && processes[rank].ExitCode != 0)
                {
                    failed = true;
                    stopAt = DateTime.UtcNow + killGrace;
                    Write(_error, null, $"granary launch: rank {rank} exited with code {processes[rank].ExitCode}; stopping the other ranks.");
                }
            }

            if (failed && DateTime.UtcNow >= stopAt)
            {
                KillAll(processes, exits, killed);
                await Task.WhenAll(exits);
            }

            if (exits.All(e => e.IsCompleted))
            {
                break;
            }

            var wait = stopAt == DateTime.MaxValue ? Timeout.InfiniteTimeSpan : Max(stopAt - DateTime.UtcNow, TimeSpan.Zero);
            var pending = exits.Where((_, rank) => !observed[rank]).Append(Task.Delay(wait, cancelled.Token)).ToList();
            await Task.WhenAny(pending);

            if (cancelled.IsCancellationRequested)
            {
                Write(_error, null, "granary launch: interrupted; killing all ranks.");
                KillAll(processes, exits, killed);
                await Task.WhenAll(exits);
                return 130;
            }
        }

        // The worst rank: the highest exit code among ranks that ended on their own (the killed ones only echo the failure).
        return processes.Where((_, rank) => !killed[rank]).Select(p => p.ExitCode).DefaultIfEmpty(0).Max();
    }

    private Process Start(RankCommand rank)
    {
        // Each rank leads its own process group (setsid execs in place, so the pid is the group id): killing the
        // group also catches children the rank forks while it is being killed, which a tree walk can miss.
        var info = new ProcessStartInfo(SetSid ?? rank.FileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        if (SetSid is not null)
        {
            info.ArgumentList.Add(rank.FileName);
        }

        foreach (var argument in rank.Arguments)
        {
            info.ArgumentList.Add(argument);
        }

        foreach (var (name, value) in rank.Environment)
        {
            info.Environment[name] = value;
        }

        if (rank.WorkingDirectory is not null)
        {
            info.WorkingDirectory = rank.WorkingDirectory;
        }

        var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => Write(_out, rank.Rank, e.Data);
        process.ErrorDataReceived += (_, e) => Write(_error, rank.Rank, e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    private void Write(TextWriter writer, int? rank, string? line)
    {
        if (line is null)
        {
            return;
        }

        lock (_outputLock)
        {
            writer.WriteLine(rank is null ? line : $"[{rank}] {line}");
            writer.Flush();
        }
    }

    private static void KillAll(List<Process> processes, List<Task> exits, bool[] killed)
    {
        for (var rank = 0; rank < processes.Count; rank++)
        {
            if (exits[rank].IsCompleted)
            {
                continue;
            }

            killed[rank] = true;
            var process = processes[rank];
            try
            {
                if (SetSid is not null)
                {
                    // Fails only if setsid has not made the group yet, when the process has no children to leave behind.
                    if (KillProcessGroup(-process.Id, 9) != 0)
                    {
                        process.Kill();
                    }
                }
                else
                {
                    // Without process groups, walk the tree: a rank is often sh or ssh with the real program beneath it.
                    process.Kill(entireProcessTree: true);
                }
            }
            catch (InvalidOperationException)
            {
                // Already exited.
            }
        }
    }

    private static readonly string? SetSid = new[] { "/usr/bin/setsid", "/bin/setsid" }.FirstOrDefault(File.Exists);

    [LibraryImport("libc", EntryPoint = "kill")]
    private static partial int KillProcessGroup(int negativeProcessGroup, int signal);

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    /// <summary>Runs <paramref name="body"/> with a token cancelled by Ctrl-C or SIGTERM.</summary>
    public static async Task<int> WithTerminationAsync(Func<CancellationToken, Task<int>> body)
    {
        using var cancellation = new CancellationTokenSource();
        void OnSignal(PosixSignalContext context)
        {
            context.Cancel = true;
            cancellation.Cancel();
        }

        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        using var terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
        return await body(cancellation.Token);
    }
}
