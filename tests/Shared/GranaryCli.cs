using System.Diagnostics;
using System.Text;
using Xunit;

namespace Granary.Testing;

/// <summary>Runs the granary CLI built beside the test assembly, with a hard timeout; shared by the test projects.</summary>
internal static class GranaryCli
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
    public static string[] Command => [Dotnet, Assembly];

    public static CliResult Run(TimeSpan timeout, params string[] args) => Run(timeout, input: null, environment: null, args);

    /// <param name="input">Written to standard input, which is then closed; null leaves it empty.</param>
    /// <param name="environment">Extra environment variables for the process.</param>
    public static CliResult Run(TimeSpan timeout, string? input, IReadOnlyDictionary<string, string>? environment, params string[] args)
    {
        var info = new ProcessStartInfo(Dotnet)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            // Only when there is input to give: launched ranks inherit stdin, and the tests that run `launch` keep it as it was.
            RedirectStandardInput = input is not null,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(Assembly);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            info.Environment[key] = value;
        }

        var output = new StringBuilder();
        var error = new StringBuilder();
        var watch = Stopwatch.StartNew();
        using var process = new Process { StartInfo = info };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (output) { output.AppendLine(e.Data); } } };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (error) { error.AppendLine(e.Data); } } };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        if (input is not null)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            Assert.Fail($"granary {string.Join(' ', args)} did not finish within {timeout}:\n{output}\n{error}");
        }

        process.WaitForExit();
        lock (output)
        {
            lock (error)
            {
                return new CliResult(process.ExitCode, output.ToString(), error.ToString(), watch.Elapsed);
            }
        }
    }
}

internal sealed record CliResult(int ExitCode, string Output, string Error, TimeSpan Elapsed)
{
    /// <summary>Both streams, for assertion messages.</summary>
    public override string ToString() => $"exit {ExitCode}\nstdout:\n{Output}\nstderr:\n{Error}";

    /// <summary>Exit code, both streams together (stdout first) and the time taken.</summary>
    public void Deconstruct(out int exitCode, out string output, out TimeSpan elapsed)
    {
        exitCode = ExitCode;
        output = Output + Error;
        elapsed = Elapsed;
    }
}
