using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Reference;

/// <summary>Cache bookkeeping and argument checks, on a reference model so results can be checked against transformers.</summary>
public sealed class KvCacheTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 1);
    private readonly ReferenceModel _reference = ReferenceModel.Load("llama_tied");
    private readonly LoadedModel _loaded;

    public KvCacheTests()
    {
        _loaded = ModelLoader.Load(_reference.Directory, _backend);
    }

    public void Dispose()
    {
        _loaded.Dispose();
        _backend.Dispose();
    }

    [Fact]
    public void RunningPastCapacityThrowsAndKeepsTheCache()
    {
        var model = _loaded.Model;
        using var cache = model.CreateCache(_reference.PromptIds.Length);
        var logits = new float[model.Config.VocabularySize];
        model.Forward(_reference.PromptIds, cache, logits);

        var error = Assert.Throws<InvalidOperationException>(() => model.Forward([5], cache, logits));

        Assert.Contains("cannot take 1 more", error.Message);
        Assert.Equal(_reference.PromptIds.Length, cache.Length);
        Assert.Equal(cache.Length, cache.Capacity);
    }

    [Fact]
    public void ResetStartsOverAtPositionZero()
    {
        var model = _loaded.Model;
        using var cache = model.CreateCache(32);
        var logits = new float[model.Config.VocabularySize];
        model.Forward([7, 8, 9], cache, logits);

        cache.Reset();
        model.Forward([_reference.PromptIds[0]], cache, logits);

        Assert.Equal(1, cache.Length);
        Assert.True(logits.Zip(_reference.Logits[0]).All(p => Math.Abs(p.First - p.Second) < 1e-3f));
    }

    [Fact]
    public void TruncateCannotGrowTheCache()
    {
        using var cache = _loaded.Model.CreateCache(8);

        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => cache.Truncate(-1));
    }

    [Fact]
    public void InvalidArgumentsAreRejected()
    {
        var model = _loaded.Model;
        using var cache = model.CreateCache(8);
        var vocabulary = model.Config.VocabularySize;

        Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward([vocabulary], cache, new float[vocabulary]));
        Assert.Throws<ArgumentException>(() => model.Forward([1], cache, new float[vocabulary - 1]));
        Assert.Throws<ArgumentException>(() => model.Forward([], cache, new float[vocabulary]));
        Assert.Equal(0, cache.Length);

        using var other = ModelLoader.Load(_reference.Directory, _backend);
        using var foreign = other.Model.CreateCache(8);
        Assert.Throws<ArgumentException>(() => model.Forward([1], foreign, new float[vocabulary]));
    }
}
