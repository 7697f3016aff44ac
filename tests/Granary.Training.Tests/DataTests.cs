using Granary.Models.Tokenization;

namespace Granary.Training.Tests;

/// <summary>One token per character (code % 250 + 3); chat template "role: content\n", generation prompt "assistant: ".</summary>
internal sealed class CharacterTokenizer : ITextTokenizer
{
    public int VocabularySize => 256;

    public IReadOnlySet<int> EndOfSequenceIds { get; } = new HashSet<int> { 2 };

    public bool HasChatTemplate { get; init; } = true;

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = false) =>
        [.. (addSpecialTokens ? [1] : Array.Empty<int>()), .. text.Select(c => (c % 250) + 3)];

    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false) => throw new NotSupportedException();

    public IStreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => throw new NotSupportedException();

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, bool enableThinking = false) =>
        string.Concat(messages.Select(m => $"{m.Role}: {m.Content}\n")) + (addGenerationPrompt ? "assistant: " : "");
}

public sealed class DataTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("granary-data-").FullName;

    [Fact]
    public void ReadsTheThreeFormatsAndMasksPrompts()
    {
        var path = Write("train.jsonl",
            """{"text": "abc"}""",
            "",
            """{"prompt": "hi", "completion": "yo"}""",
            """{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}""");

        var examples = JsonlDataset.Load(path, new CharacterTokenizer());

        Assert.Equal(3, examples.Count);
        Assert.Equal([1, 'a' + 3, 'b' + 3, 'c' + 3, 2], examples[0].Tokens);
        Assert.Equal(0, examples[0].PromptLength);
        Assert.Equal("user: hi\nassistant: ".Length, examples[1].PromptLength);
        Assert.Equal("user: hi\nassistant: yo\n".Length, examples[1].Tokens.Length);
        Assert.Equal("user: q\nassistant: ".Length, examples[2].PromptLength);

        var batch = new Batcher([examples[1]], batchSize: 1, maxSequenceLength: 100, maskPrompt: true).Batches(repeat: false).Single();
        var (_, targets) = batch.Targets();
        Assert.Equal("yo\n".Select(c => (c % 250) + 3), targets);
    }

    [Fact]
    public void BadRecordsNameFileAndLine()
    {
        var path = Write("valid.jsonl", """{"text": "ok"}""", """{"prompt": 3, "completion": "x"}""");

        var error = Assert.Throws<InvalidDataException>(() => JsonlDataset.Load(path, new CharacterTokenizer()));

        Assert.StartsWith($"{path}:2: ", error.Message);
        Assert.Contains("\"prompt\" must be a string", error.Message);
        var broken = Write("test.jsonl", """{"messages": [{"role": "robot", "content": "x"}]}""");
        Assert.StartsWith($"{broken}:1: ", Assert.Throws<InvalidDataException>(() => JsonlDataset.Load(broken, new CharacterTokenizer())).Message);
        var notJson = Write("train.jsonl", "{\"text\": \"a\"}", "{\"text\": ");
        Assert.StartsWith($"{notJson}:2: ", Assert.Throws<InvalidDataException>(() => JsonlDataset.Load(notJson, new CharacterTokenizer())).Message);
    }

    [Fact]
    public void BatchesGroupSimilarLengthsAndPadOnTheRight()
    {
        TrainingExample[] examples = [new([5, 6, 7, 8, 9], 0), new([5, 6], 0), new([5, 6, 7, 8], 0), new([5, 6, 7], 0)];

        var batches = new Batcher(examples, batchSize: 2, maxSequenceLength: 4, maskPrompt: false, padId: 0).Batches(repeat: false).ToArray();

        Assert.Equal(2, batches.Length);
        Assert.Equal([5, 6, 0, 5, 6, 7], batches[0].Ids);
        Assert.Equal([5, 6, TokenBatch.Ignored, 5, 6, 7], batches[0].Labels);
        Assert.Equal(4, batches[1].Length);
        Assert.Equal([5, 6, 7, 8, 5, 6, 7, 8], batches[1].Ids);
    }

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string Write(string name, params string[] lines)
    {
        var path = Path.Combine(_directory, name);
        File.WriteAllLines(path, lines);
        return path;
    }
}
