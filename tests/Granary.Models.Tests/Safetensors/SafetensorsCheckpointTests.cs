using System.Runtime.InteropServices;
using Granary.Models.Safetensors;

namespace Granary.Models.Tests.Safetensors;

public sealed class SafetensorsCheckpointTests : IDisposable
{
    private readonly TestDirectory _directory = new();

    public void Dispose() => _directory.Dispose();

    [Fact]
    public void IndexMapsTensorsToShards()
    {
        new SafetensorsWriter().Add("a", [1f, 2f], 2).Save(_directory.File("part-1.safetensors"));
        new SafetensorsWriter().Add("b", [3f], 1).Save(_directory.File("part-2.safetensors"));
        File.WriteAllText(
            _directory.File(SafetensorsCheckpoint.IndexFileName),
            """{"metadata":{"total_size":12},"weight_map":{"a":"part-1.safetensors","b":"part-2.safetensors"}}""");

        using var checkpoint = SafetensorsCheckpoint.Open(_directory.Path);
        var (fileA, a) = checkpoint.GetTensor("a");
        var (fileB, b) = checkpoint.GetTensor("b");

        Assert.EndsWith("part-1.safetensors", fileA.Path);
        Assert.EndsWith("part-2.safetensors", fileB.Path);
        Assert.Equal([1f, 2f], MemoryMarshal.Cast<byte, float>(fileA.GetBytes(a.Name)).ToArray());
        Assert.Equal([3f], MemoryMarshal.Cast<byte, float>(fileB.GetBytes(b.Name)).ToArray());
        Assert.Equal(["a", "b"], checkpoint.TensorNames.Order());
    }

    [Fact]
    public void WithoutIndexEverySafetensorsFileIsUsed()
    {
        new SafetensorsWriter().Add("a", [1f], 1).Save(_directory.File("x.safetensors"));
        new SafetensorsWriter().Add("b", [2f], 1).Save(_directory.File("y.safetensors"));

        using var checkpoint = SafetensorsCheckpoint.Open(_directory.Path);

        Assert.True(checkpoint.Contains("a"));
        Assert.True(checkpoint.Contains("b"));
    }

    [Fact]
    public void IndexNamingAMissingShardIsRejected()
    {
        File.WriteAllText(_directory.File(SafetensorsCheckpoint.IndexFileName), """{"weight_map":{"a":"gone.safetensors"}}""");

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsCheckpoint.Open(_directory.Path));

        Assert.Equal("weight_map.a", error.Item);
        Assert.Contains("gone.safetensors", error.Message);
    }

    [Fact]
    public void TensorListedInIndexButAbsentFromShardNamesBoth()
    {
        new SafetensorsWriter().Add("a", [1f], 1).Save(_directory.File("part.safetensors"));
        File.WriteAllText(_directory.File(SafetensorsCheckpoint.IndexFileName), """{"weight_map":{"a":"part.safetensors","b":"part.safetensors"}}""");
        using var checkpoint = SafetensorsCheckpoint.Open(_directory.Path);

        var error = Assert.Throws<ModelLoadException>(() => checkpoint.GetTensor("b"));

        Assert.Equal("b", error.Item);
        Assert.EndsWith("part.safetensors", error.FilePath);
    }

    [Fact]
    public void DuplicateTensorAcrossFilesIsRejected()
    {
        new SafetensorsWriter().Add("a", [1f], 1).Save(_directory.File("x.safetensors"));
        new SafetensorsWriter().Add("a", [2f], 1).Save(_directory.File("y.safetensors"));

        var error = Assert.Throws<ModelLoadException>(() => SafetensorsCheckpoint.Open(_directory.Path));

        Assert.Equal("a", error.Item);
        Assert.Contains("x.safetensors", error.Message);
    }

    [Fact]
    public void DirectoryWithoutWeightsIsRejected()
    {
        var error = Assert.Throws<ModelLoadException>(() => SafetensorsCheckpoint.Open(_directory.Path));

        Assert.Contains("*.safetensors", error.Message);
    }
}
