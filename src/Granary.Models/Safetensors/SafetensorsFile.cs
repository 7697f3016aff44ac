using System.IO.MemoryMappedFiles;
using System.Buffers.Binary;
using System.Text.Json;
using Granary.Tensors;

namespace Granary.Models.Safetensors;

/// <summary>
/// A memory-mapped safetensors file: an 8-byte little-endian header length, a JSON header, then the raw tensor data.
/// The whole file is one read-only view; tensors are addressed by pointer and 64-bit offsets, so tensors and files
/// larger than 2 GiB work. The header is validated against the file size when the file is opened.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Headers larger than this are rejected, as the reference implementation does, to bound parsing.</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const string MetadataKey = "__metadata__";

    private readonly MemoryMappedFile _mapping;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _data;
    private readonly Dictionary<string, SafetensorsTensorInfo> _tensors;
    private bool _disposed;

    private SafetensorsFile(
        string path,
        long fileLength,
        MemoryMappedFile mapping,
        MemoryMappedViewAccessor view,
        byte* data,
        Dictionary<string, SafetensorsTensorInfo> tensors,
        IReadOnlyDictionary<string, string> metadata)
    {
        Path = path;
        FileLength = fileLength;
        _mapping = mapping;
        _view = view;
        _data = data;
        _tensors = tensors;
        Metadata = metadata;
    }

    public string Path { get; }

    public long FileLength { get; }

    /// <summary>The free-form string map stored under "__metadata__" (empty when absent).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    public IReadOnlyDictionary<string, SafetensorsTensorInfo> Tensors => _tensors;

    public static SafetensorsFile Open(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        path = System.IO.Path.GetFullPath(path);
        var fileLength = new FileInfo(path) is { Exists: true } info
            ? info.Length
            : throw new ModelLoadException(path, null, "File not found.");
        if (fileLength < sizeof(ulong))
        {
            throw new ModelLoadException(path, null, $"Truncated: {fileLength} bytes is too short for the 8-byte header length.");
        }

        var mapping = MemoryMappedFile.CreateFromFile(path, FileMode.Open, mapName: null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        var acquired = false;
        try
        {
            view = mapping.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* start = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref start);
            acquired = true;
            start += view.PointerOffset;

            var headerLength = BinaryPrimitives.ReadUInt64LittleEndian(new ReadOnlySpan<byte>(start, sizeof(ulong)));
            var available = (ulong)(fileLength - sizeof(ulong));
            if (headerLength > available)
            {
                throw new ModelLoadException(path, "header", $"Header length {headerLength} runs past the end of the file ({fileLength} bytes).");
            }

            if (headerLength > MaxHeaderBytes)
            {
                throw new ModelLoadException(path, "header", $"Header length {headerLength} exceeds the {MaxHeaderBytes}-byte limit.");
            }

            var header = new ReadOnlySpan<byte>(start + sizeof(ulong), (int)headerLength);
            var dataStart = sizeof(ulong) + (long)headerLength;
            var (tensors, metadata) = ParseHeader(header, fileLength - dataStart, path);
            return new SafetensorsFile(path, fileLength, mapping, view, start + dataStart, tensors, metadata);
        }
        catch
        {
            if (acquired)
            {
                view!.SafeMemoryMappedViewHandle.ReleasePointer();
            }

            view?.Dispose();
            mapping.Dispose();
            throw;
        }
    }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The header entry of <paramref name="name"/>; throws naming the tensor and this file when it is absent.</summary>
    public SafetensorsTensorInfo GetTensor(string name) =>
        _tensors.TryGetValue(name, out var info)
            ? info
            : throw new ModelLoadException(Path, name, "Tensor not found in this file.");

    /// <summary>The mapped bytes of a tensor, kept alive by this file.</summary>
    public HostRegion GetRegion(SafetensorsTensorInfo tensor)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!_tensors.TryGetValue(tensor.Name, out var own) || !ReferenceEquals(own, tensor))
        {
            throw new ArgumentException($"Tensor '{tensor.Name}' does not belong to {Path}.", nameof(tensor));
        }

        return new HostRegion(_data + tensor.DataOffset, tensor.ByteLength, this);
    }

    public HostRegion GetRegion(string name) => GetRegion(GetTensor(name));

    /// <summary>The bytes of a tensor smaller than 2 GiB as a span over the mapping.</summary>
    public ReadOnlySpan<byte> GetBytes(string name)
    {
        var region = GetRegion(name);
        if (region.Length > int.MaxValue)
        {
            throw new ModelLoadException(Path, name, $"Tensor of {region.Length} bytes is too large for a span; map it instead.");
        }

        return new ReadOnlySpan<byte>(region.Pointer, (int)region.Length);
    }

    /// <summary>Hands a tensor to <paramref name="backend"/> without copying where the backend can use host memory in place.</summary>
    public Tensor Map(string name, IComputeBackend backend)
    {
        var info = GetTensor(name);
        return backend.Map(GetRegion(info), info.DType, info.Shape.ToArray());
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _mapping.Dispose();
    }

    /// <summary>Parses and validates a header against the size of the data section that follows it.</summary>
    internal static (Dictionary<string, SafetensorsTensorInfo> Tensors, IReadOnlyDictionary<string, string> Metadata) ParseHeader(
        ReadOnlySpan<byte> header, long dataLength, string path)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(header.ToArray());
        }
        catch (JsonException e)
        {
            throw new ModelLoadException(path, "header", $"Header is not valid JSON: {e.Message}", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new ModelLoadException(path, "header", $"Header must be a JSON object, got {document.RootElement.ValueKind}.");
            }

            var tensors = new Dictionary<string, SafetensorsTensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == MetadataKey)
                {
                    ReadMetadata(property.Value, metadata, path);
                }
                else
                {
                    tensors.Add(property.Name, ReadTensor(property.Name, property.Value, dataLength, path));
                }
            }

            RequireDisjoint(tensors.Values, path);
            return (tensors, metadata);
        }
    }

    private static void ReadMetadata(JsonElement element, Dictionary<string, string> metadata, string path)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ModelLoadException(path, MetadataKey, "Metadata must be an object of strings.");
        }

        foreach (var entry in element.EnumerateObject())
        {
            metadata[entry.Name] = entry.Value.ValueKind == JsonValueKind.String
                ? entry.Value.GetString()!
                : throw new ModelLoadException(path, $"{MetadataKey}.{entry.Name}", $"Metadata values must be strings, got {entry.Value.ValueKind}.");
        }
    }

    private static SafetensorsTensorInfo ReadTensor(string name, JsonElement element, long dataLength, string path)
    {
        if (element.ValueKind != JsonValueKind.Object)
        {
            throw new ModelLoadException(path, name, $"Tensor entry must be an object, got {element.ValueKind}.");
        }

        if (!element.TryGetProperty("dtype", out var dtypeElement) || dtypeElement.ValueKind != JsonValueKind.String)
        {
            throw new ModelLoadException(path, name, "Missing string field 'dtype'.");
        }

        var dtypeName = dtypeElement.GetString()!;
        if (!DTypeExtensions.TryParseSafetensors(dtypeName, out var dtype))
        {
            throw new ModelLoadException(path, name, $"Unsupported dtype '{dtypeName}'.");
        }

        if (!element.TryGetProperty("shape", out var shapeElement) || shapeElement.ValueKind != JsonValueKind.Array)
        {
            throw new ModelLoadException(path, name, "Missing array field 'shape'.");
        }

        var shape = new int[shapeElement.GetArrayLength()];
        var axis = 0;
        foreach (var dimension in shapeElement.EnumerateArray())
        {
            if (dimension.ValueKind != JsonValueKind.Number || !dimension.TryGetInt32(out shape[axis]) || shape[axis] < 0)
            {
                throw new ModelLoadException(path, name, $"Shape dimension {axis} must be an integer in [0, {int.MaxValue}], got {dimension.GetRawText()}.");
            }

            axis++;
        }

        if (!element.TryGetProperty("data_offsets", out var offsetsElement)
            || offsetsElement.ValueKind != JsonValueKind.Array
            || offsetsElement.GetArrayLength() != 2
            || !offsetsElement[0].TryGetInt64(out var begin)
            || !offsetsElement[1].TryGetInt64(out var end)
            || begin < 0
            || end < begin)
        {
            throw new ModelLoadException(path, name, "Field 'data_offsets' must be [begin, end] with 0 <= begin <= end.");
        }

        if (end > dataLength)
        {
            throw new ModelLoadException(
                path, name, $"data_offsets [{begin}, {end}] run past the end of the data section ({dataLength} bytes): the file is truncated.");
        }

        long expected;
        try
        {
            expected = checked(Tensor.ShapeElementCount(shape) * dtype.SizeInBytes());
        }
        catch (OverflowException)
        {
            throw new ModelLoadException(path, name, $"Shape [{string.Join(", ", shape)}] is too large.");
        }

        if (end - begin != expected)
        {
            throw new ModelLoadException(
                path, name, $"data_offsets [{begin}, {end}] hold {end - begin} bytes but {dtypeName}[{string.Join(", ", shape)}] needs {expected}.");
        }

        return new SafetensorsTensorInfo(name, dtype, shape, begin, end - begin);
    }

    private static void RequireDisjoint(IEnumerable<SafetensorsTensorInfo> tensors, string path)
    {
        SafetensorsTensorInfo? previous = null;
        foreach (var tensor in tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.DataOffset))
        {
            if (previous is not null && tensor.DataOffset < previous.DataOffset + previous.ByteLength)
            {
                throw new ModelLoadException(path, tensor.Name, $"Data overlaps tensor '{previous.Name}'.");
            }

            previous = tensor;
        }
    }
}
