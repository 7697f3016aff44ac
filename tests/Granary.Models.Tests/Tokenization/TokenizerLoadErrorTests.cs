using System.Text.Json.Nodes;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>Bad model folders fail with errors that name the file and field at fault.</summary>
public sealed class TokenizerLoadErrorTests
{
    [Fact]
    public void MissingTokenizerJsonNamesTheFile()
    {
        using var directory = new ScratchDirectory();

        var error = Assert.Throws<FileNotFoundException>(() => HuggingFaceTokenizer.Load(directory));

        Assert.Equal(Path.Combine(directory, "tokenizer.json"), error.FileName);
        Assert.Contains(directory.Path, error.Message);
    }

    [Fact]
    public void MalformedTokenizerJsonNamesTheFile()
    {
        using var directory = new ScratchDirectory();
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), """{"model": {"type": "BPE", "vocab": {"a": 0,}""");

        var error = Assert.Throws<ModelLoadException>(() => HuggingFaceTokenizer.Load(directory));

        Assert.Equal(Path.Combine(directory, "tokenizer.json"), error.FilePath);
        Assert.Contains("not valid JSON", error.Message);
    }

    [Fact]
    public void MalformedTokenizerConfigNamesTheFile()
    {
        using var directory = new ScratchDirectory();
        WriteTokenizer(directory, _ => { });
        File.WriteAllText(Path.Combine(directory, "tokenizer_config.json"), "{\"chat_template\": ");

        var error = Assert.Throws<ModelLoadException>(() => HuggingFaceTokenizer.Load(directory));

        Assert.Equal(Path.Combine(directory, "tokenizer_config.json"), error.FilePath);
    }

    [Fact]
    public void MinimalByteLevelTokenizerLoads()
    {
        // Guards the fixture below: each failing case differs from a loadable file by one field.
        using var directory = new ScratchDirectory();
        WriteTokenizer(directory, _ => { });
        var subject = HuggingFaceTokenizer.Load(directory);

        Assert.Equal("héllo 😀", subject.Decode(subject.Encode("héllo 😀").ToArray()));
        Assert.False(subject.HasChatTemplate);
    }

    [Theory]
    [InlineData("model.type", "WordPiece")]
    [InlineData("pre_tokenizer", "Whitespace")]
    [InlineData("pre_tokenizer.pretokenizers[0].pattern.Regex", @"\w+|\s+")]
    [InlineData("normalizer", "NFKC")]
    [InlineData("decoder", "WordPiece")]
    [InlineData("model.merges", "a q")]
    public void UnsupportedContentNamesTheFileAndField(string field, string value)
    {
        using var directory = new ScratchDirectory();
        WriteTokenizer(directory, tokenizer =>
        {
            switch (field)
            {
                case "model.type":
                    tokenizer["model"]!["type"] = value;
                    break;
                case "pre_tokenizer":
                    tokenizer["pre_tokenizer"] = new JsonObject { ["type"] = value };
                    break;
                case "pre_tokenizer.pretokenizers[0].pattern.Regex":
                    tokenizer["pre_tokenizer"]!["pretokenizers"]![0]!["pattern"]!["Regex"] = value;
                    break;
                case "normalizer":
                case "decoder":
                    tokenizer[field] = new JsonObject { ["type"] = value };
                    break;
                case "model.merges":
                    tokenizer["model"]!["merges"] = new JsonArray(value);
                    break;
            }
        });

        var error = Assert.Throws<ModelLoadException>(() => HuggingFaceTokenizer.Load(directory));

        Assert.Equal(Path.Combine(directory, "tokenizer.json"), error.FilePath);
        Assert.Equal(field, error.Item);
    }

    /// <summary>Writes a loadable byte-level BPE with only the 256 byte tokens and the Qwen split, edited by <paramref name="edit"/>.</summary>
    private static void WriteTokenizer(ScratchDirectory directory, Action<JsonObject> edit)
    {
        var vocabulary = new JsonObject();
        for (var b = 0; b < 256; b++)
        {
            vocabulary[ByteLevelAlphabet.ToChar((byte)b).ToString()] = b;
        }

        var tokenizer = new JsonObject
        {
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject { ["type"] = "Split", ["pattern"] = new JsonObject { ["Regex"] = PieceSplitter.QwenPattern }, ["behavior"] = "Isolated", ["invert"] = false },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject { ["type"] = "BPE", ["vocab"] = vocabulary, ["merges"] = new JsonArray() },
        };
        edit(tokenizer);

        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizer.ToJsonString());
    }
}
