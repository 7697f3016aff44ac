using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text.Json;
using Granary.Tensors;

namespace Granary.Models.Safetensors;

/// <summary>
/// Builds a safetensors file in memory and writes it. Tensors are laid out contiguously, largest element size first
/// (then in the order added) so every tensor stays aligned to its element size, and the header is padded with spaces
/// to a multiple of 8 bytes, as the reference implementation does.
/// </summary>
public sealed class SafetensorsWriter
{
    private readonly List<(string Name, DType DType, int[] Shape, byte[] Data)> _tensors = [];
    private readonly HashSet<string> _names = new(StringComparer.Ordinal);

    /// <summary>Free-form strings stored under "__metadata__".</summary>
    public IDictionary<string, string> Metadata { get; } = new Dictionary<string, string>(StringComparer.Ordinal);

    /// <summary>Adds a tensor from its raw little-endian bytes (copied).</summary>
    public SafetensorsWriter Add(string name, DType dtype, ReadOnlySpan<int> shape, ReadOnlySpan<byte> data)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        if (name == "__metadata__")
        {
            throw new ArgumentException("'__metadata__' is reserved.", nameof(name));
        }

        foreach (var d in shape)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(d, nameof(shape));
        }

        var expected = Tensor.ShapeElementCount(shape) * dtype.SizeInBytes();
        if (data.Length != expected)
        {
            throw new ArgumentException($"Tensor '{name}' {dtype}[{string.Join(", ", shape.ToArray())}] needs {expected} bytes, got {data.Length}.", nameof(data));
        }

        if (!_names.Add(name))
        {
            throw new ArgumentException($"Tensor '{name}' was already added.", nameof(name));
        }

        _tensors.Add((name, dtype, shape.ToArray(), data.ToArray()));
        return this;
    }

    public SafetensorsWriter Add(string name, ReadOnlySpan<float> values, params ReadOnlySpan<int> shape) =>
        Add(name, DType.F32, shape, MemoryMarshal.AsBytes(values));

    public SafetensorsWriter Add(string name, ReadOnlySpan<Half> values, params ReadOnlySpan<int> shape) =>
        Add(name, DType.F16, shape, MemoryMarshal.AsBytes(values));

    public SafetensorsWriter Add(string name, ReadOnlySpan<uint> values, params ReadOnlySpan<int> shape) =>
        Add(name, DType.U32, shape, MemoryMarshal.AsBytes(values));

    public SafetensorsWriter Add(string name, ReadOnlySpan<int> values, params ReadOnlySpan<int> shape) =>
        Add(name, DType.I32, shape, MemoryMarshal.AsBytes(values));

    public void Save(string path)
    {
        using var stream = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None);
        Save(stream);
    }

    public void Save(Stream stream)
    {
        var ordered = _tensors.OrderByDescending(t => t.DType.SizeInBytes()).ToArray();
        var header = BuildHeader(ordered);
        Span<byte> length = stackalloc byte[sizeof(ulong)];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)header.Length);
        stream.Write(length);
        stream.Write(header);
        foreach (var tensor in ordered)
        {
            stream.Write(tensor.Data);
        }
    }

    private byte[] BuildHeader((string Name, DType DType, int[] Shape, byte[] Data)[] ordered)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            if (Metadata.Count > 0)
            {
                json.WriteStartObject("__metadata__");
                foreach (var (key, value) in Metadata)
                {
                    json.WriteString(key, value);
                }

                json.WriteEndObject();
            }

            long offset = 0;
            foreach (var tensor in ordered)
            {
                json.WriteStartObject(tensor.Name);
                json.WriteString("dtype", tensor.DType.ToSafetensorsName());
                json.WriteStartArray("shape");
                foreach (var d in tensor.Shape)
                {
                    json.WriteNumberValue(d);
                }

                json.WriteEndArray();
                json.WriteStartArray("data_offsets");
                json.WriteNumberValue(offset);
                json.WriteNumberValue(offset + tensor.Data.Length);
                json.WriteEndArray();
                json.WriteEndObject();
                offset += tensor.Data.Length;
            }

            json.WriteEndObject();
        }

        var padding = (int)((8 - (buffer.Length % 8)) % 8);
        for (var i = 0; i < padding; i++)
        {
            buffer.WriteByte((byte)' ');
        }

        return buffer.ToArray();
    }
}
