using System.ComponentModel;
using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Text.Json.Nodes;
using Granary.Models.BuiltIn;
using Granary.Models.Generation;

namespace Granary.Gateway.Tests;

/// <summary>The gateway as a client nobody here wrote sees it: the official `openai` npm package, run by Node.</summary>
[Collection(GatewayCollection.Name)]
public sealed class OpenAiClientTests(GatewayFixture fixture)
{
    [OpenAiPackageFact]
    public async Task The_openai_npm_client_chats_streams_completes_lists_and_reads_errors()
    {
        using var engine = new DirectEngine(fixture.ChatModelDirectory);
        var promptIds = engine.EncodeChat(("system", "You are terse."), ("user", "Tell me about the harvest."));
        var expected = engine.Generate(promptIds, 10, SamplingOptions.Greedy);

        var result = await RunScriptAsync(fixture.Address, TestModels.Chat, fixture.KeyedHttp.BaseAddress!, GatewayFixture.ApiKey);

        var whole = result["whole"]!;
        Assert.Equal("chat.completion", whole["object"]!.GetValue<string>());
        Assert.Equal(expected.Text, whole["content"]!.GetValue<string>());
        Assert.Equal("length", whole["finish"]!.GetValue<string>());
        AssertUsage(whole["usage"]!, promptIds.Length, 10);

        var stream = result["stream"]!;
        Assert.Equal(expected.Text, stream["text"]!.GetValue<string>());
        Assert.Equal("length", stream["finish"]!.GetValue<string>());
        AssertUsage(stream["usage"]!, promptIds.Length, 10);
        Assert.True(stream["chunks"]!.GetValue<int>() >= 4);

        AssertUsage(result["completion"]!["usage"]!, null, 5);
        Assert.Equal(TestModels.ServedNames, result["models"]!.AsArray().Select(id => id!.GetValue<string>()));

        var unknown = result["unknownModel"]!;
        Assert.Equal(("NotFoundError", 404, "model_not_found", "model"), (unknown["name"]!.GetValue<string>(), unknown["status"]!.GetValue<int>(), unknown["code"]!.GetValue<string>(), unknown["param"]!.GetValue<string>()));
        var bad = result["badParameter"]!;
        Assert.Equal(("BadRequestError", 400, "n"), (bad["name"]!.GetValue<string>(), bad["status"]!.GetValue<int>(), bad["param"]!.GetValue<string>()));
        var wrongKey = result["wrongKey"]!;
        Assert.Equal(("AuthenticationError", 401, "invalid_api_key"), (wrongKey["name"]!.GetValue<string>(), wrongKey["status"]!.GetValue<int>(), wrongKey["code"]!.GetValue<string>()));
        AssertUsage(result["keyed"]!["usage"]!, promptIds.Length, 3);
    }

    private static void AssertUsage(JsonNode usage, int? prompt, int completion)
    {
        var promptTokens = usage["prompt_tokens"]!.GetValue<int>();
        if (prompt is not null)
        {
            Assert.Equal(prompt, promptTokens);
        }

        Assert.Equal(completion, usage["completion_tokens"]!.GetValue<int>());
        Assert.Equal(promptTokens + completion, usage["total_tokens"]!.GetValue<int>());
    }

    private static async Task<JsonNode> RunScriptAsync(Uri address, string model, Uri keyedAddress, string apiKey)
    {
        var start = new ProcessStartInfo("node")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "OpenAiClient", "openai-client.mjs"));
        start.ArgumentList.Add(new Uri(address, "v1").ToString());
        start.ArgumentList.Add(model);
        start.ArgumentList.Add(new Uri(keyedAddress, "v1").ToString());
        start.ArgumentList.Add(apiKey);
        start.Environment["OPENAI_MODULE"] = OpenAiPackage.ModulePath;
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"The openai client script did not finish within 90 s: {await errors}");
        }

        Assert.True(process.ExitCode == 0, $"The openai client script failed ({process.ExitCode}): {await errors}\n{await output}");
        var lines = (await output).Split('\n', StringSplitOptions.RemoveEmptyEntries);
        return JsonNode.Parse(lines[^1])!;
    }
}

/// <summary>
/// The `openai` npm package, fetched once with `npm pack` (it has no dependencies to install) and cached under
/// $GRANARY_CACHE/npm or ~/.cache/granary/npm, as the tokenizer tests fetch their npm packages.
/// </summary>
internal static class OpenAiPackage
{
    public const string PinnedVersion = "7.57.0";
    private static readonly TimeSpan s_timeout = TimeSpan.FromSeconds(90);
    private static readonly Lazy<string?> s_module = new(Fetch);
    private static string? s_unavailableReason;

    public static string ModulePath => s_module.Value ?? throw new InvalidOperationException(s_unavailableReason);

    public static string? UnavailableReason => s_module.Value is null ? s_unavailableReason : null;

    private static string? Fetch()
    {
        var cache = Path.Combine(BuiltInModel.CacheDirectory, "npm");
        var target = Path.Combine(cache, $"openai-{PinnedVersion}");
        var module = Path.Combine(target, "index.mjs");
        try
        {
            if (File.Exists(module))
            {
                return module;
            }

            Run("node", "--version");
            Directory.CreateDirectory(cache);
            var work = Directory.CreateTempSubdirectory("granary-npm-").FullName;
            try
            {
                Run("npm", "pack", $"openai@{PinnedVersion}", "--pack-destination", work, "--loglevel=error");
                var archive = Directory.GetFiles(work, "*.tgz").SingleOrDefault() ?? throw new IOException("npm pack produced no .tgz.");
                var extracted = Path.Combine(work, "package");
                using (var reader = new TarReader(new GZipStream(File.OpenRead(archive), CompressionMode.Decompress)))
                {
                    while (reader.GetNextEntry() is { } entry)
                    {
                        if (entry.EntryType is TarEntryType.RegularFile or TarEntryType.V7RegularFile && entry.Name.StartsWith("package/", StringComparison.Ordinal))
                        {
                            var path = Path.GetFullPath(Path.Combine(work, entry.Name));
                            if (!path.StartsWith(extracted + Path.DirectorySeparatorChar, StringComparison.Ordinal))
                            {
                                throw new InvalidDataException($"{entry.Name} points outside the package.");
                            }

                            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
                            entry.ExtractToFile(path, overwrite: true);
                        }
                    }
                }

                if (!File.Exists(Path.Combine(extracted, "index.mjs")))
                {
                    throw new InvalidDataException($"{Path.GetFileName(archive)} has no package/index.mjs.");
                }

                // Moved into place whole, so a concurrent or interrupted run never sees half a package.
                try
                {
                    Directory.Move(extracted, target);
                }
                catch (IOException) when (File.Exists(module))
                {
                }
            }
            finally
            {
                Directory.Delete(work, recursive: true);
            }

            return module;
        }
        catch (Exception e) when (e is IOException or Win32Exception or InvalidDataException or UnauthorizedAccessException or TimeoutException)
        {
            s_unavailableReason = $"the openai npm package {PinnedVersion} could not be had in '{cache}' (needs node and a reachable npm registry): {e.Message}";
            return null;
        }
    }

    private static void Run(string program, params string[] arguments)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new IOException($"{program} could not be started.");
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(s_timeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', arguments)} took longer than {s_timeout.TotalSeconds} s (is the npm registry reachable?).");
        }

        if (process.ExitCode != 0)
        {
            throw new IOException($"{program} {string.Join(' ', arguments)} exited with {process.ExitCode}: {errors.Result.Trim()} {output.Result.Trim()}");
        }
    }
}

/// <summary>A fact that is skipped, with the reason, when Node or the openai npm package cannot be had.</summary>
public sealed class OpenAiPackageFactAttribute : FactAttribute
{
    public OpenAiPackageFactAttribute()
    {
        Skip = OpenAiPackage.UnavailableReason;
    }
}
