using System.Text.Json;
using Granary.Testing;

namespace Granary.Cli.Tests;

/// <summary>`lora` trains adapters, `fuse` merges them, and `generate --adapter-path` runs the merged model.</summary>
public sealed class AdapterTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(5);
    private readonly string _root = Path.Combine(Path.GetTempPath(), "granary-adapters-" + Guid.NewGuid().ToString("N"));

    public AdapterTests() => Directory.CreateDirectory(_root);

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void GenerateWithAdaptersEqualsGenerateWithTheFusedModel()
    {
        var environment = new Dictionary<string, string> { ["GRANARY_CACHE"] = Path.Combine(_root, "cache") };
        var data = Path.Combine(_root, "data");
        Directory.CreateDirectory(data);
        var records = string.Join('\n', Enumerable.Range(0, 8).Select(i => JsonSerializer.Serialize(new { text = $"the harvest of the village {i} was good" })));
        File.WriteAllText(Path.Combine(data, "train.jsonl"), records);
        File.WriteAllText(Path.Combine(data, "valid.jsonl"), records);
        var adapters = Path.Combine(_root, "adapters");
        var fused = Path.Combine(_root, "fused");

        var trained = GranaryCli.Run(
            Timeout, null, environment,
            "lora", "--data", data, "--train", "--iters", "2", "--batch-size", "2", "--num-layers", "1",
            "--learning-rate", "0.01", "--adapter-path", adapters);
        Assert.True(trained.ExitCode == 0, trained.ToString());
        var fusedRun = GranaryCli.Run(Timeout, null, environment, "fuse", "--adapter-path", adapters, "--save-path", fused);
        Assert.True(fusedRun.ExitCode == 0, fusedRun.ToString());

        string[] generate = ["generate", "--prompt", "the harvest", "--temperature", "0", "--max-tokens", "6", "--json"];
        var withAdapters = GranaryCli.Run(Timeout, null, environment, [.. generate, "--adapter-path", adapters]);
        var withFused = GranaryCli.Run(Timeout, null, environment, [.. generate, "--model", fused]);

        Assert.True(withAdapters.ExitCode == 0, withAdapters.ToString());
        Assert.True(withFused.ExitCode == 0, withFused.ToString());
        Assert.Equal(Tokens(withFused), Tokens(withAdapters));
    }

    [Fact]
    public void AMissingAdapterDirectoryIsAUsageError()
    {
        var result = GranaryCli.Run(
            Timeout, "generate", "--model", GenerateCommandTests.ModelDirectory("qwen3"), "--prompt-ids", "1,2", "--adapter-path", "/nonexistent/adapters");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("'/nonexistent/adapters' does not exist", result.Error);
    }

    private static int[] Tokens(CliResult result)
    {
        using var json = JsonDocument.Parse(result.Output.TrimEnd().Split('\n')[^1]);
        return [.. json.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32())];
    }
}
