using System.Diagnostics;
using System.Text;

namespace Granary.Collectives.Tests;

/// <summary>Runs the granary CLI built next to this test assembly, with a hard timeout.</summary>
internal static class Cli
{
    /// <summary>The granary.dll of the same configuration (artifacts layout: bin/&lt;project&gt;/&lt;config&gt;/).</summary>
    public static string Assembly
    {
        get
        {
            var configuration = new DirectoryInfo(AppContext.BaseDirectory).Name;
            var path = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "Granary.Cli", configuration, "granary.dll"));
            return File.Exists(path) ? path : throw new FileNotFoundException($"The granary CLI was not built at {path}.");
        }
    }

    public static string Dotnet => Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    /// <summary>The words that start granary: dotnet and the dll.</summary>
    public static string[] Granary => [Dotnet, Assembly];

    public static (int ExitCode, string Output, TimeSpan Elapsed) Run(TimeSpan timeout, params string[] args)
    {
        var info = new ProcessStartInfo(Dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        info.ArgumentList.Add(Assembly);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        var output = new StringBuilder();
        var watch = Stopwatch.StartNew();
        using var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"granary {string.Join(' ', args)} did not finish within {timeout}:\n{output}");
        }

        process.WaitForExit();
        lock (output)
        {
            return (process.ExitCode, output.ToString(), watch.Elapsed);
        }
    }
}
