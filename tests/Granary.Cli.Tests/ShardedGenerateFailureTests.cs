using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Granary.Testing;

namespace Granary.Cli.Tests;

/// <summary>
/// `granary launch -n 2 -- granary generate` on a sharded model, with one rank's process SIGKILLed mid-generation: the
/// surviving rank must fail by itself with a collective error naming the dead rank, launch must exit non-zero, and no
/// rank process may be left running. Linux only (reads /proc to find the rank processes).
/// </summary>
public sealed partial class ShardedGenerateFailureTests : IDisposable
{
    /// <summary>Tokens rank 0 must have printed before the kill: proof that decoding is under way.</summary>
    private const int TokensBeforeKill = 5;

    /// <summary>Far more than can be decoded before the kill, on any machine.</summary>
    private const int MaxTokens = 100_000;

    /// <summary>Startup of two dotnet processes, model load and the first tokens, on a loaded 2-core machine.</summary>
    private static readonly TimeSpan TokensDeadline = TimeSpan.FromSeconds(35);

    /// <summary>
    /// From the kill to launch's exit. Below launch's kill grace (30 s), so a survivor that hangs fails the test rather
    /// than being killed by launch; above the collective timeout (default 5 s), the survivor's last resort.
    /// </summary>
    private static readonly TimeSpan ExitDeadline = TimeSpan.FromSeconds(15);

    private readonly string _model = Directory.CreateTempSubdirectory("granary-kill-").FullName;

    public ShardedGenerateFailureTests() => WriteLineTokenizedModel(_model);

    public void Dispose() => Directory.Delete(_model, recursive: true);

    [Theory]
    [InlineData("tensor", "shm", 1)]
    [InlineData("pipeline", "shm", 1)]
    [InlineData("tensor", "tcp", 0)]
    [InlineData("pipeline", "ring", 0)]
    public void RankKilledMidGenerationEndsEveryRankWithAClearError(string parallelism, string backend, int killedRank)
    {
        Assert.True(OperatingSystem.IsLinux(), "this test finds the rank processes through /proc");
        var survivor = 1 - killedRank;
        var output = new StringBuilder();
        var tokenLines = 0;
        using var tokensPrinted = new ManualResetEventSlim();
        void Collect(string? line)
        {
            if (line is null)
            {
                return;
            }

            lock (output)
            {
                output.AppendLine(line);
            }

            if (TokenLine().IsMatch(line) && Interlocked.Increment(ref tokenLines) == TokensBeforeKill)
            {
                tokensPrinted.Set();
            }
        }

        var launch = new Process { StartInfo = new ProcessStartInfo(GranaryCli.Dotnet) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false } };
        string[] arguments =
        [
            GranaryCli.Assembly, "launch", "-n", "2", "--backend", backend, "--kill-grace-ms", "30000", "--",
            .. GranaryCli.Command, "generate", "--model", _model, "--prompt-ids", "1,286,63,59,113,302,111,141,132,109,117,142",
            "--temperature", "0", "--max-tokens", MaxTokens.ToString(CultureInfo.InvariantCulture), "--no-eos", "--threads", "1",
            .. parallelism == "pipeline" ? new[] { "--pipeline" } : [],
        ];
        foreach (var argument in arguments)
        {
            launch.StartInfo.ArgumentList.Add(argument);
        }

        launch.OutputDataReceived += (_, e) => Collect(e.Data);
        launch.ErrorDataReceived += (_, e) => Collect(e.Data);
        var ranks = new Dictionary<int, RankProcess>();
        using (launch)
        {
            try
            {
                launch.Start();
                launch.BeginOutputReadLine();
                launch.BeginErrorReadLine();
                Assert.True(tokensPrinted.Wait(TokensDeadline), $"rank 0 printed {tokenLines} tokens in {TokensDeadline}:\n{Text(output)}");

                ranks = RankProcess.ChildrenOf(launch.Id);
                Assert.True(ranks.Count == 2, $"launch {launch.Id} has rank processes {string.Join(", ", ranks)}");
                using (var victim = Process.GetProcessById(ranks[killedRank].Id))
                {
                    victim.Kill(); // SIGKILL on Unix: no managed cleanup, no goodbye to the peers.
                }

                var clock = Stopwatch.StartNew();
                Assert.True(launch.WaitForExit(ExitDeadline), $"launch did not exit {ExitDeadline} after rank {killedRank} was killed:\n{Text(output)}");
                launch.WaitForExit(); // Drains the redirected streams.
                var elapsed = clock.Elapsed;
                var text = Text(output);

                Assert.True(launch.ExitCode != 0, $"launch exited with 0 after {elapsed}:\n{text}");
                Assert.DoesNotContain("Generation: ", text); // The kill landed mid-generation: no rank finished it.
                // The survivor ended by itself (launch's grace is longer than the test waits) with a collective error
                // that names the dead rank, e.g. "AllReduce: rank 1 (process 123) died." or "Recv: receiving from rank 0 failed: ...".
                var error = new Regex($@"^\[{survivor}\] granary generate: error: \w+: .*\brank {killedRank}\b", RegexOptions.Multiline);
                Assert.True(error.IsMatch(text), $"rank {survivor} reported no error naming rank {killedRank}:\n{text}");
                Assert.DoesNotContain("   at ", text);
                foreach (var rank in ranks.Values)
                {
                    Assert.False(rank.IsRunning(), $"rank process {rank} is still there after launch exited:\n{text}");
                }
            }
            finally
            {
                if (!launch.HasExited)
                {
                    launch.Kill(entireProcessTree: true);
                    launch.WaitForExit();
                }

                foreach (var rank in ranks.Values)
                {
                    rank.KillIfRunning();
                }
            }
        }
    }

    /// <summary>A launch-prefixed line of rank 0's stream that is one generated token ("[0] t123").</summary>
    [GeneratedRegex(@"^\[0\] t\d+$")]
    private static partial Regex TokenLine();

    private static string Text(StringBuilder output)
    {
        lock (output)
        {
            return output.ToString();
        }
    }

    /// <summary>
    /// The llama reference model with room for a long generation, and a tokenizer whose token i reads "t{i}\n": rank 0
    /// then prints one line per token, which launch forwards as it comes, so the test sees decoding progress.
    /// </summary>
    private static void WriteLineTokenizedModel(string directory)
    {
        var reference = GenerateCommandTests.ModelDirectory("llama");
        foreach (var file in Directory.GetFiles(reference))
        {
            File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
        }

        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(reference, "config.json")))!.AsObject();
        var vocabularySize = config["vocab_size"]!.GetValue<int>();
        config["max_position_embeddings"] = 131_072;
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());

        // Byte-level BPE (the only kind the runtime reads) needs every byte's symbol in the vocabulary; they go after
        // the model's ids, which the model never samples, so every id it does sample is a whole line.
        var vocabulary = new JsonObject();
        for (var id = 0; id < vocabularySize; id++)
        {
            vocabulary[$"t{id}{ByteSymbol((byte)'\n')}"] = id;
        }

        for (var b = 0; b < 256; b++)
        {
            vocabulary[ByteSymbol((byte)b)] = vocabularySize + b;
        }

        var tokenizer = new JsonObject
        {
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocabulary, ["merges"] = new JsonArray() },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+" },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
        };
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizer.ToJsonString());
    }

    /// <summary>GPT-2's byte-level alphabet: printable Latin-1 bytes stand for themselves, the rest map to U+0100 onwards in byte order.</summary>
    private static string ByteSymbol(byte value)
    {
        static bool Printable(int b) => b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
        if (Printable(value))
        {
            return ((char)value).ToString();
        }

        var shifted = 0;
        for (var b = 0; b < value; b++)
        {
            shifted += Printable(b) ? 0 : 1;
        }

        return ((char)(256 + shifted)).ToString();
    }

    /// <summary>A rank's process, told apart from a later process that reuses its pid by its start time.</summary>
    private sealed record RankProcess(int Id, int Rank, long StartTicks)
    {
        /// <summary>The direct children of <paramref name="parent"/> by their GRANARY_RANK (launch's setsid execs the rank in place).</summary>
        public static Dictionary<int, RankProcess> ChildrenOf(int parent)
        {
            var ranks = new Dictionary<int, RankProcess>();
            foreach (var directory in Directory.EnumerateDirectories("/proc"))
            {
                if (!int.TryParse(Path.GetFileName(directory), out var id) || ReadStat(id) is not { } stat || stat.Parent != parent)
                {
                    continue;
                }

                try
                {
                    var rank = File.ReadAllText($"/proc/{id}/environ").Split('\0')
                        .Where(v => v.StartsWith("GRANARY_RANK=", StringComparison.Ordinal))
                        .Select(v => int.Parse(v["GRANARY_RANK=".Length..], CultureInfo.InvariantCulture))
                        .Single();
                    ranks[rank] = new RankProcess(id, rank, stat.StartTicks);
                }
                catch (IOException)
                {
                    // Exited while being looked at.
                }
            }

            return ranks;
        }

        /// <summary>Still there, zombies included: a rank nobody reaped is left behind too.</summary>
        public bool IsRunning() => ReadStat(Id) is { } stat && stat.StartTicks == StartTicks;

        public void KillIfRunning()
        {
            if (IsRunning())
            {
                try
                {
                    using var process = Process.GetProcessById(Id);
                    process.Kill(entireProcessTree: true);
                }
                catch (ArgumentException)
                {
                    // Exited meanwhile.
                }
            }
        }

        public override string ToString() => $"rank {Rank} (pid {Id})";

        /// <summary>Parent pid and start time (fields 4 and 22 of /proc/PID/stat; the name in field 2 may hold spaces).</summary>
        private static (int Parent, long StartTicks)? ReadStat(int id)
        {
            string stat;
            try
            {
                stat = File.ReadAllText($"/proc/{id}/stat");
            }
            catch (IOException)
            {
                return null;
            }

            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            return (int.Parse(fields[1], CultureInfo.InvariantCulture), long.Parse(fields[19], CultureInfo.InvariantCulture));
        }
    }
}
