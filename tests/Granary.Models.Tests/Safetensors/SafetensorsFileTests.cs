using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Granary.Models.Safetensors;
using Granary.Tensors;

namespace Granary.Models.Tests.Safetensors;

public sealed class SafetensorsFileTests : IDisposable
{
    private readonly TestDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    [Fact]
    public void ReadsAHandWrittenFile()
    {
        // Built byte by byte from the format description: u64 LE header length, JSON header, data.
        var data = new byte[] { 0, 0, 128, 63, 0, 0, 0, 64, 0x00, 0x3C };
        var path = WriteRaw("hand.safetensors", """{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F16","shape":[1,1],"data_offsets":[8,10]}}""", data);

        using var file = SafetensorsFile.Open(path);

        Assert.Equal("pt", file.Metadata["format"]);
        Assert.Equal(DType.F32, file.Tensors["a"].DType);
        Assert.Equal([2], file.Tensors["a"].Shape);
        Assert.Equal([1.0f, 2.0f], MemoryMarshal.Cast<byte, float>(file.GetBytes("a")).ToArray());
        Assert.Equal(DType.F16, file.Tensors["b"].DType);
        Assert.Equal([1, 1], file.Tensors["b"].Shape);
        Assert.Equal((Half)1.0f, MemoryMarshal.Cast<byte, Half>(file.GetBytes("b"))[0]);
    }

    [Fact]
    public void WriterProducesTheDocumentedLayout()
    {
        var path = _directory.File("written.safetensors");
        var writer = new SafetensorsWriter();
        writer.Metadata["format"] = "pt";
        writer.Add("half", [(Half)1, (Half)2, (Half)3], 3);
        writer.Add("floats", [1f, 2f, 3f, 4f, 5f, 6f], 2, 3);
        writer.Save(path);

        var bytes = File.ReadAllBytes(path);
        var headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0, (8 + headerLength) % 8);
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength).TrimEnd(' '));
        Assert.Equal("pt", header.RootElement.GetProperty("__metadata__").GetProperty("format").GetString());

        // f32 first so both tensors stay aligned to their element size, and no gaps between them.
        var floats = header.RootElement.GetProperty("floats");
        Assert.Equal("F32", floats.GetProperty("dtype").GetString());
        Assert.Equal("[2,3]", floats.GetProperty("shape").GetRawText());
        Assert.Equal("[0,24]", floats.GetProperty("data_offsets").GetRawText());
        Assert.Equal("[24,30]", header.RootElement.GetProperty("half").GetProperty("data_offsets").GetRawText());
        Assert.Equal(8 + headerLength + 30, bytes.Length);
        Assert.Equal(6f, BitConverter.ToSingle(bytes, 8 + headerLength + 20));
        Assert.Equal((Half)3, BitConverter.ToHalf(bytes, 8 + headerLength + 28));
    }

    [Fact]
    public void FileShorterThanTheLengthPrefixIsTruncated()
    {
        var path = _directory.File("short.safetensors");
        File.WriteAllBytes(path, [1, 2, 3]);

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsFile.Open(path));

        Assert.Equal(path, error.FilePath);
        Assert.Contains("Truncated", error.Message);
    }

    [Fact]
    public void HeaderLengthPastEndOfFileIsRejected()
    {
        var path = _directory.File("long-header.safetensors");
        var bytes = new byte[8 + 4];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, 1000);
        File.WriteAllBytes(path, bytes);

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsFile.Open(path));

        Assert.Equal("header", error.Item);
        Assert.Contains("1000", error.Message);
        Assert.Contains("past the end", error.Message);
    }

    [Fact]
    public void BadHeaderJsonIsRejected()
    {
        var path = WriteRaw("bad.safetensors", """{"a":{"dtype":"F32",""", []);

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsFile.Open(path));

        Assert.Equal(path, error.FilePath);
        Assert.Equal("header", error.Item);
        Assert.Contains("JSON", error.Message);
    }

    [Fact]
    public void DataOffsetsPastEndOfFileNameTheTensor()
    {
        var path = WriteRaw("cut.safetensors", """{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", new byte[8]);

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsFile.Open(path));

        Assert.Equal("w", error.Item);
        Assert.Contains("truncated", error.Message);
    }

    [Theory]
    [InlineData("""{"w":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}}""", "F8_E4M3")]
    [InlineData("""{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}""", "needs 12")]
    [InlineData("""{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,16]}}""", "dimension 0")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}}""", "data_offsets")]
    [InlineData("""{"w":{"dtype":"F32","shape":[4]}}""", "data_offsets")]
    [InlineData("""{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"v":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}""", "overlaps")]
    public void MalformedTensorEntriesNameTheTensor(string header, string expected)
    {
        var path = WriteRaw("malformed.safetensors", header, new byte[16]);

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsFile.Open(path));

        Assert.Contains(expected, error.Message);
        Assert.Contains(path, error.Message);
        Assert.NotNull(error.Item);
    }

    [Fact]
    public unsafe void TensorBeyondTwoGibibytesIsRead()
    {
        // A sparse file: 3 GiB long but only the header and the last tensor are written.
        const long farOffset = (1L << 31) + 4096;
        var path = _directory.File("sparse.safetensors");
        var header = $$$"""{"padding":{"dtype":"U8","shape":[4,536870912,1],"data_offsets":[0,2147483648]},"far":{"dtype":"F32","shape":[4],"data_offsets":[{{{farOffset}}},{{{farOffset + 16}}}]}}""";
        var headerBytes = Encoding.UTF8.GetBytes(header);
        float[] values = [1.5f, -2.25f, 3.125f, 1e-3f];
        using (var stream = new FileStream(path, FileMode.Create, FileAccess.Write))
        {
            stream.SetLength(3L << 30);
            var prefix = new byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(prefix, (ulong)headerBytes.Length);
            stream.Write(prefix);
            stream.Write(headerBytes);
            stream.Position = 8 + headerBytes.Length + farOffset;
            stream.Write(MemoryMarshal.AsBytes(values.AsSpan()));
        }

        using var file = SafetensorsFile.Open(path);
        var region = file.GetRegion("far");

        Assert.Equal(16, region.Length);
        Assert.Equal(values, new ReadOnlySpan<float>(region.Pointer, 4).ToArray());
        Assert.Equal(1L << 31, file.GetRegion("padding").Length);
    }

    [Fact]
    public void MissingTensorNamesTensorAndFile()
    {
        var path = _directory.File("one.safetensors");
        new SafetensorsWriter().Add("present", [1f], 1).Save(path);
        using var file = SafetensorsFile.Open(path);

        var error = Assert.Throws<ModelLoadException>(() => file.GetTensor("absent"));

        Assert.Equal("absent", error.Item);
        Assert.Equal(path, error.FilePath);
    }

    private string WriteRaw(string name, string header, byte[] data)
    {
        var path = _directory.File(name);
        var headerBytes = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + headerBytes.Length + data.Length];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, (ulong)headerBytes.Length);
        headerBytes.CopyTo(bytes, 8);
        data.CopyTo(bytes, 8 + headerBytes.Length);
        File.WriteAllBytes(path, bytes);
        return path;
    }
}
