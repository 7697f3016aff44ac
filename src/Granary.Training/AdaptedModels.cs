using System.Globalization;
using System.Security.Cryptography;
using System.Text;

namespace Granary.Training;

/// <summary>
/// A model with adapters merged into its weights (<see cref="ModelFusion"/>) for serving: `generate --adapter-path`
/// merges into a temporary copy; a silo keeps merged copies in a cache folder so a reload does not merge again.
/// </summary>
public static class AdaptedModels
{
    /// <summary>
    /// Checks that <paramref name="adapterDirectory"/> holds adapters (a readable adapter_config.json and
    /// adapters.safetensors) without reading the weights; throws naming what is missing or wrong.
    /// </summary>
    public static FineTuneOptions CheckAdapterDirectory(string adapterDirectory)
    {
        if (!Directory.Exists(adapterDirectory))
        {
            throw new DirectoryNotFoundException($"Adapter folder '{adapterDirectory}' does not exist.");
        }

        if (!File.Exists(Path.Combine(adapterDirectory, AdapterFiles.ConfigFileName)))
        {
            throw new InvalidDataException($"Adapter folder '{adapterDirectory}' has no {AdapterFiles.ConfigFileName}.");
        }

        if (!File.Exists(Path.Combine(adapterDirectory, AdapterFiles.WeightsFileName)))
        {
            throw new InvalidDataException($"Adapter folder '{adapterDirectory}' has no {AdapterFiles.WeightsFileName}.");
        }

        return AdapterFiles.ReadOptions(adapterDirectory);
    }

    /// <summary>
    /// Merges the adapters into a copy of the model in a new temporary folder, removed when the process exits (a
    /// loaded model keeps its memory-mapped files alive until then), and returns that folder.
    /// </summary>
    public static string FuseToTemporary(string modelDirectory, string adapterDirectory)
    {
        CheckAdapterDirectory(adapterDirectory);
        var fused = Path.Combine(Path.GetTempPath(), $"granary-fused-{Environment.ProcessId}-{Guid.NewGuid():N}");
        Fuse(modelDirectory, adapterDirectory, fused);
        AppDomain.CurrentDomain.ProcessExit += (_, _) => DeleteQuietly(fused);
        return fused;
    }

    /// <summary>
    /// Where the merged copy of the model with the adapters belongs under <paramref name="cacheDirectory"/>: the folder
    /// name hashes both paths and their files' sizes and times, so retrained adapters get a copy of their own.
    /// Checks the adapter folder first (<see cref="CheckAdapterDirectory"/>).
    /// </summary>
    public static string CachedCopyPath(string modelDirectory, string adapterDirectory, string cacheDirectory)
    {
        CheckAdapterDirectory(adapterDirectory);
        return Path.Combine(cacheDirectory, CachedName(modelDirectory, adapterDirectory));
    }

    /// <summary>
    /// Merges the adapters into a copy of the model at <paramref name="target"/> (from <see cref="CachedCopyPath"/>)
    /// unless a copy is there already; returns whether this call merged. Copies appear whole: they are merged beside
    /// their final name, then renamed.
    /// </summary>
    public static bool FuseCached(string modelDirectory, string adapterDirectory, string target)
    {
        if (Directory.Exists(target))
        {
            return false;
        }

        var partial = $"{target}.partial-{Guid.NewGuid():N}";
        try
        {
            Fuse(modelDirectory, adapterDirectory, partial);
            Directory.Move(partial, target);
            return true;
        }
        catch (IOException) when (Directory.Exists(target))
        {
            // Another process (a silo sharing the cache folder) finished the same copy first.
            return false;
        }
        finally
        {
            DeleteQuietly(partial);
        }
    }

    private static void Fuse(string modelDirectory, string adapterDirectory, string outputDirectory)
    {
        try
        {
            ModelFusion.Fuse(modelDirectory, adapterDirectory, outputDirectory);
        }
        catch (Exception e) when (e is InvalidDataException or ArgumentException or KeyNotFoundException or InvalidOperationException)
        {
            throw new InvalidDataException($"The adapters in '{adapterDirectory}' do not fit the model in '{modelDirectory}': {e.Message}", e);
        }
    }

    private static string CachedName(string modelDirectory, string adapterDirectory)
    {
        var key = new StringBuilder();
        foreach (var directory in new[] { modelDirectory, adapterDirectory })
        {
            key.Append(Path.GetFullPath(directory)).Append('\n');
            foreach (var file in Directory.EnumerateFiles(directory).Order(StringComparer.Ordinal))
            {
                var info = new FileInfo(file);
                key.Append(CultureInfo.InvariantCulture, $"{info.Name} {info.Length} {info.LastWriteTimeUtc.Ticks}\n");
            }
        }

        var hash = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key.ToString())))[..16];
        return $"{Readable(modelDirectory)}+{Readable(adapterDirectory)}-{hash}";
    }

    private static string Readable(string directory)
    {
        var name = Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(directory)));
        return new string([.. name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_')]);
    }

    private static void DeleteQuietly(string directory)
    {
        try
        {
            if (Directory.Exists(directory))
            {
                Directory.Delete(directory, recursive: true);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // A temporary folder left behind is harmless; the next run uses a new name.
        }
    }
}
