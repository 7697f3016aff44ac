using System.Text.Json;

namespace Granary.Models.Safetensors;

/// <summary>
/// The safetensors files of one model directory: either the shards listed by "model.safetensors.index.json"
/// (opened on first use, so a rank that loads only some layers maps only their shards) or every "*.safetensors" file.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string IndexFileName = "model.safetensors.index.json";

    private readonly Dictionary<string, string> _fileOfTensor;
    private readonly Dictionary<string, SafetensorsFile> _openFiles = new(StringComparer.Ordinal);
    private readonly string? _indexPath;
    private readonly Lock _openLock = new();
    private bool _disposed;

    private SafetensorsCheckpoint(string directory, Dictionary<string, string> fileOfTensor, string? indexPath)
    {
        Directory = directory;
        _fileOfTensor = fileOfTensor;
        _indexPath = indexPath;
    }

    public string Directory { get; }

    public IEnumerable<string> TensorNames => _fileOfTensor.Keys;

    public static SafetensorsCheckpoint Open(string directory)
    {
        directory = Path.GetFullPath(directory);
        if (!System.IO.Directory.Exists(directory))
        {
            throw new ModelLoadException(directory, null, "Model directory not found.");
        }

        var indexPath = Path.Combine(directory, IndexFileName);
        return File.Exists(indexPath) ? OpenIndexed(directory, indexPath) : OpenAll(directory);
    }

    public bool Contains(string name) => _fileOfTensor.ContainsKey(name);

    /// <summary>Finds a tensor and the file that holds it.</summary>
    public bool TryGetTensor(string name, out SafetensorsFile file, out SafetensorsTensorInfo tensor)
    {
        if (!_fileOfTensor.TryGetValue(name, out var fileName))
        {
            file = null!;
            tensor = null!;
            return false;
        }

        file = GetFile(fileName);
        if (!file.Tensors.TryGetValue(name, out tensor!))
        {
            throw new ModelLoadException(file.Path, name, $"Tensor is listed in {_indexPath} but missing from this shard.");
        }

        return true;
    }

    /// <summary>Finds a tensor; throws naming the tensor and where it was looked for when it is absent.</summary>
    public (SafetensorsFile File, SafetensorsTensorInfo Tensor) GetTensor(string name) =>
        TryGetTensor(name, out var file, out var tensor)
            ? (file, tensor)
            : throw new ModelLoadException(DescribeSource(), name, "Tensor not found in the checkpoint.");

    /// <summary>The index file, the single safetensors file, or the directory: whichever a missing tensor was looked up in.</summary>
    public string DescribeSource()
    {
        if (_indexPath is not null)
        {
            return _indexPath;
        }

        var files = _fileOfTensor.Values.Distinct().ToArray();
        return files.Length == 1 ? Path.Combine(Directory, files[0]) : Directory;
    }

    public void Dispose()
    {
        lock (_openLock)
        {
            _disposed = true;
            foreach (var file in _openFiles.Values)
            {
                file.Dispose();
            }

            _openFiles.Clear();
        }
    }

    private SafetensorsFile GetFile(string fileName)
    {
        lock (_openLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_openFiles.TryGetValue(fileName, out var file))
            {
                file = SafetensorsFile.Open(Path.Combine(Directory, fileName));
                _openFiles.Add(fileName, file);
            }

            return file;
        }
    }

    private static SafetensorsCheckpoint OpenIndexed(string directory, string indexPath)
    {
        var fileOfTensor = new Dictionary<string, string>(StringComparer.Ordinal);
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            if (document.RootElement.ValueKind != JsonValueKind.Object
                || !document.RootElement.TryGetProperty("weight_map", out var weightMap)
                || weightMap.ValueKind != JsonValueKind.Object)
            {
                throw new ModelLoadException(indexPath, "weight_map", "Missing object field 'weight_map'.");
            }

            foreach (var entry in weightMap.EnumerateObject())
            {
                var fileName = entry.Value.ValueKind == JsonValueKind.String
                    ? entry.Value.GetString()!
                    : throw new ModelLoadException(indexPath, $"weight_map.{entry.Name}", "Shard file name must be a string.");

                // Shards must sit in the model directory; a path that leaves it is malformed, not a feature.
                if (Path.GetFileName(fileName) != fileName)
                {
                    throw new ModelLoadException(indexPath, $"weight_map.{entry.Name}", $"Shard '{fileName}' is not a plain file name.");
                }

                if (!File.Exists(Path.Combine(directory, fileName)))
                {
                    throw new ModelLoadException(indexPath, $"weight_map.{entry.Name}", $"Shard '{fileName}' does not exist in {directory}.");
                }

                fileOfTensor[entry.Name] = fileName;
            }
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(indexPath, null, $"Not valid JSON: {e.Message}", e);
        }

        return new SafetensorsCheckpoint(directory, fileOfTensor, indexPath);
    }

    private static SafetensorsCheckpoint OpenAll(string directory)
    {
        var paths = System.IO.Directory.GetFiles(directory, "*.safetensors").Order(StringComparer.Ordinal).ToArray();
        if (paths.Length == 0)
        {
            throw new ModelLoadException(directory, null, $"No {IndexFileName} and no *.safetensors files.");
        }

        var checkpoint = new SafetensorsCheckpoint(directory, new Dictionary<string, string>(StringComparer.Ordinal), indexPath: null);
        try
        {
            foreach (var path in paths)
            {
                var fileName = Path.GetFileName(path);
                var file = checkpoint.GetFile(fileName);
                foreach (var name in file.Tensors.Keys)
                {
                    if (!checkpoint._fileOfTensor.TryAdd(name, fileName))
                    {
                        throw new ModelLoadException(path, name, $"Tensor also appears in {checkpoint._fileOfTensor[name]}.");
                    }
                }
            }
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }

        return checkpoint;
    }
}
