using System.Text.Json;
using Granary.Testing;

namespace Granary.Cli.Tests;

/// <summary>With no --model the CLI writes and runs the built-in model; chat and generate agree on it.</summary>
public sealed class BuiltInModelTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(5);
    private readonly string _cache = Path.Combine(Path.GetTempPath(), "granary-cache-" + Guid.NewGuid().ToString("N"));

    public void Dispose()
    {
        if (Directory.Exists(_cache))
        {
            Directory.Delete(_cache, recursive: true);
        }
    }

    [Fact]
    public void GreedyChatReplyEqualsGreedyGenerateThroughTheChatTemplate()
    {
        var environment = new Dictionary<string, string> { ["GRANARY_CACHE"] = _cache };

        var generated = GranaryCli.Run(
            Timeout, null, environment,
            "generate", "--prompt", "tell me about the harvest", "--temperature", "0", "--max-tokens", "8", "--json");
        Assert.True(generated.ExitCode == 0, generated.ToString());
        Assert.True(File.Exists(Path.Combine(_cache, "models", "granary-builtin-v2", "model.safetensors")));
        using var json = JsonDocument.Parse(generated.Output.TrimEnd().Split('\n')[^1]);
        var text = json.RootElement.GetProperty("text").GetString()!;
        Assert.Equal(8, json.RootElement.GetProperty("tokens").GetArrayLength());
        Assert.NotEmpty(text.Trim());

        var chat = GranaryCli.Run(
            Timeout, "tell me about the harvest\n/exit\n", environment,
            "chat", "--temperature", "0", "--max-tokens", "8");
        Assert.True(chat.ExitCode == 0, chat.ToString());
        Assert.Contains(">> " + text, chat.Output);
    }
}
