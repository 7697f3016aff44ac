using System.Net;
using System.Net.NetworkInformation;
using System.Text;

namespace Granary.Cli.Launch;

/// <summary>The program and arguments that start one rank, and how to describe it.</summary>
internal sealed record RankCommand(int Rank, string FileName, IReadOnlyList<string> Arguments, IReadOnlyDictionary<string, string> Environment, string? WorkingDirectory)
{
    /// <summary>
    /// The default way to reach a remote host: ssh in batch mode (no password prompts), {host} and {command}
    /// replaced by the hostfile's ssh name and the shell command line.
    /// </summary>
    public const string SshTemplate = "ssh -o BatchMode=yes -o ConnectTimeout=10 {host} {command}";

    /// <summary>
    /// A rank on <paramref name="host"/>: the shell command <c>cd DIR &amp;&amp; env K=V ... CMD</c> run through
    /// <paramref name="launcherTemplate"/>, or directly through sh when the host is this machine and no template is given.
    /// </summary>
    public static RankCommand ForHost(int rank, string host, string? launcherTemplate, string workingDirectory, IReadOnlyDictionary<string, string> environment, IReadOnlyList<string> command)
    {
        var shellCommand = ShellCommand(workingDirectory, environment, command);
        if (launcherTemplate is null && IsLocal(host))
        {
            return new RankCommand(rank, "/bin/sh", ["-c", shellCommand], new Dictionary<string, string>(), null);
        }

        var words = Expand(launcherTemplate ?? SshTemplate, host, shellCommand);
        return new RankCommand(rank, words[0], words[1..], new Dictionary<string, string>(), null);
    }

    /// <summary>Splits the template on spaces and fills in {host} (anywhere in a word) and {command} (a whole word).</summary>
    public static string[] Expand(string template, string host, string shellCommand)
    {
        var words = template.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(word => word == "{command}" ? shellCommand : word.Replace("{host}", host, StringComparison.Ordinal))
            .ToArray();
        if (words.Length == 0 || !template.Contains("{command}", StringComparison.Ordinal))
        {
            throw new UsageException($"launcher template '{template}' must name a program and contain {{command}}.");
        }

        return words;
    }

    public static string ShellCommand(string workingDirectory, IReadOnlyDictionary<string, string> environment, IReadOnlyList<string> command)
    {
        var builder = new StringBuilder("cd ").Append(Quote(workingDirectory)).Append(" && exec env");
        foreach (var (name, value) in environment)
        {
            builder.Append(' ').Append(name).Append('=').Append(Quote(value));
        }

        foreach (var word in command)
        {
            builder.Append(' ').Append(Quote(word));
        }

        return builder.ToString();
    }

    /// <summary>Single-quotes a word for a POSIX shell.</summary>
    public static string Quote(string word) =>
        word.Length > 0 && word.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=@,+%".Contains(c))
            ? word
            : "'" + word.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    public static bool IsLocal(string host)
    {
        if (host is "localhost" || host == Dns.GetHostName())
        {
            return true;
        }

        if (!IPAddress.TryParse(host, out var address))
        {
            return false;
        }

        return IPAddress.IsLoopback(address) || NetworkInterface.GetAllNetworkInterfaces()
            .SelectMany(i => i.GetIPProperties().UnicastAddresses)
            .Any(u => u.Address.Equals(address));
    }

    public override string ToString() => string.Join(' ', Arguments.Prepend(FileName).Select(Quote));
}
