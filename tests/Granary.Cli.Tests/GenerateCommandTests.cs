using System.Text.Json;
using Granary.Testing;

namespace Granary.Cli.Tests;

/// <summary>`granary generate` as a user runs it: reference models give transformers' tokens, bad input a clear error.</summary>
public sealed class GenerateCommandTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    [Theory]
    [InlineData("qwen3")]
    [InlineData("llama_q8_g32")]
    [InlineData("qwen3_moe_bf16")]
    public void JsonOutputCarriesTransformersGreedyTokens(string model)
    {
        var directory = ModelDirectory(model);
        using var reference = JsonDocument.Parse(File.ReadAllText(Path.Combine(directory, "reference.json")));
        var promptIds = reference.RootElement.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        var expected = reference.RootElement.GetProperty("greedy_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();

        var result = GranaryCli.Run(
            Timeout,
            "generate", "--model", directory, "--prompt-ids", string.Join(',', promptIds),
            "--temperature", "0", "--max-tokens", expected.Length.ToString(), "--no-eos", "--json");

        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.Output.TrimEnd().Split('\n')[^1]);
        Assert.Equal(expected, json.RootElement.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()));
        Assert.Equal(promptIds.Length, json.RootElement.GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(expected.Length, json.RootElement.GetProperty("generation_tokens").GetInt32());
        Assert.Equal("length", json.RootElement.GetProperty("finish_reason").GetString());
        Assert.True(json.RootElement.GetProperty("generation_tps").GetDouble() > 0);
    }

    [Fact]
    public void AMissingModelDirectoryIsAUsageError()
    {
        var result = GranaryCli.Run(Timeout, "generate", "--model", "/nonexistent/model", "--prompt-ids", "1,2");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("'/nonexistent/model' does not exist", result.Error);
    }

    [Fact]
    public void PromptIdsMustBeIntegers()
    {
        var result = GranaryCli.Run(Timeout, "generate", "--model", ModelDirectory("qwen3"), "--prompt-ids", "1,x");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("'x'", result.Error);
    }

    [Fact]
    public void AMalformedConfigNamesTheFile()
    {
        var directory = Path.Combine(Path.GetTempPath(), "granary-cli-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(directory);
        try
        {
            foreach (var file in Directory.GetFiles(ModelDirectory("qwen3")))
            {
                File.Copy(file, Path.Combine(directory, Path.GetFileName(file)));
            }

            File.WriteAllText(Path.Combine(directory, "config.json"), "{ \"model_type\": \"qwen3\", ");
            var result = GranaryCli.Run(Timeout, "generate", "--model", directory, "--prompt-ids", "1,2");

            Assert.Equal(1, result.ExitCode);
            Assert.Contains("config.json", result.Error);
            Assert.DoesNotContain("   at ", result.Error);
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    [Fact]
    public void AnUnknownOptionIsRejected()
    {
        var result = GranaryCli.Run(Timeout, "generate", "--modle", "x");

        Assert.Equal(2, result.ExitCode);
        Assert.Contains("unknown option '--modle'", result.Error);
    }

    internal static string ModelDirectory(string name) => Path.Combine(AppContext.BaseDirectory, "reference", "models", name);
}
