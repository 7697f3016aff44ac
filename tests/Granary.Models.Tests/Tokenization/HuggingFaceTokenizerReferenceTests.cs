using System.Text;
using System.Text.Json.Nodes;
using Granary.Models.Tokenization;

namespace Granary.Models.Tests.Tokenization;

/// <summary>Ids and decoded text compared with the Hugging Face tokenizers library on a varied corpus.</summary>
public sealed class HuggingFaceTokenizerReferenceTests
{
    public static TheoryData<string, int> CorpusEntries()
    {
        var data = new TheoryData<string, int>();
        foreach (var tokenizer in new[] { "qwen3", "llama3" })
        {
            for (var index = 0; index < ReferenceData.Encodings(tokenizer).Count; index++)
            {
                data.Add(tokenizer, index);
            }
        }

        return data;
    }

    [TokenizerTheory]
    [MemberData(nameof(CorpusEntries))]
    public void EncodeMatchesHuggingFace(string tokenizer, int index)
    {
        var expected = ReferenceData.Encodings(tokenizer)[index];
        var subject = TokenizerFiles.ByName(tokenizer);

        Assert.Equal(expected.IdsNoSpecial, subject.Encode(expected.Text));
        Assert.Equal(expected.IdsWithSpecial, subject.Encode(expected.Text, addSpecialTokens: true));
    }

    [TokenizerTheory]
    [MemberData(nameof(CorpusEntries))]
    public void DecodeMatchesHuggingFace(string tokenizer, int index)
    {
        var expected = ReferenceData.Encodings(tokenizer)[index];
        var subject = TokenizerFiles.ByName(tokenizer);

        Assert.Equal(expected.Decoded, subject.Decode(expected.IdsWithSpecial));
        Assert.Equal(expected.DecodedSkipSpecial, subject.Decode(expected.IdsWithSpecial, skipSpecialTokens: true));
    }

    [TokenizerFact]
    public void ConcurrentEncodingMatchesHuggingFace()
    {
        // A fresh tokenizer, so that the threads race on filling its piece cache.
        var subject = HuggingFaceTokenizer.Load(TokenizerFiles.Llama3Directory);
        var entries = ReferenceData.Encodings("llama3");

        Parallel.For(0, entries.Count * 8, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
            Assert.Equal(entries[i % entries.Count].IdsNoSpecial, subject.Encode(entries[i % entries.Count].Text)));
    }

    [TokenizerFact]
    public void TemplateProcessingPostProcessorAddsBeginningOfText()
    {
        // Meta's own Llama-3 tokenizer.json adds <|begin_of_text|> through TemplateProcessing; the npm copy does not.
        using var directory = new ScratchDirectory();
        var tokenizerJson = JsonNode.Parse(File.ReadAllText(Path.Combine(TokenizerFiles.Llama3Directory, "tokenizer.json")))!.AsObject();
        tokenizerJson["post_processor"] = JsonNode.Parse(File.ReadAllText(ReferenceData.PathOf("llama3-template-bos.post_processor.json")));
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizerJson.ToJsonString());
        var subject = HuggingFaceTokenizer.Load(directory);

        foreach (var expected in ReferenceData.Encodings("llama3-template-bos"))
        {
            Assert.Equal(expected.IdsNoSpecial, subject.Encode(expected.Text));
            Assert.Equal(expected.IdsWithSpecial, subject.Encode(expected.Text, addSpecialTokens: true));
        }
    }

    [TokenizerFact]
    public void StrippingAddedTokensAbsorbNeighbouringWhiteSpace()
    {
        using var directory = new ScratchDirectory();
        var tokenizerJson = JsonNode.Parse(File.ReadAllText(Path.Combine(TokenizerFiles.Qwen3Directory, "tokenizer.json")))!.AsObject();
        var flags = JsonNode.Parse(File.ReadAllText(ReferenceData.PathOf("qwen3-added-token-strip.flags.json")))!.AsObject();
        foreach (var token in tokenizerJson["added_tokens"]!.AsArray())
        {
            if (flags[token!["content"]!.GetValue<string>()] is JsonObject tokenFlags)
            {
                foreach (var (name, value) in tokenFlags)
                {
                    token[name] = value!.DeepClone();
                }
            }
        }

        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizerJson.ToJsonString());
        var subject = HuggingFaceTokenizer.Load(directory);

        foreach (var expected in ReferenceData.Encodings("qwen3-added-token-strip"))
        {
            Assert.Equal(expected.IdsNoSpecial, subject.Encode(expected.Text));
            Assert.Equal(expected.Decoded, subject.Decode(expected.IdsWithSpecial));
        }
    }

    [TokenizerFact]
    public void EndOfSequenceIdsIncludeTheEndOfTurnToken()
    {
        // <|im_end|> is Qwen3's eos_token and ChatML's end of turn; Llama-3 ends text with <|end_of_text|> and turns with <|eot_id|>.
        Assert.Equal([151645], TokenizerFiles.Qwen3.EndOfSequenceIds.Order());
        Assert.Equal([128001, 128009], TokenizerFiles.Llama3.EndOfSequenceIds.Order());
    }

    [TokenizerFact]
    public void EndOfSequenceIdsIncludeGenerationConfig()
    {
        using var directory = new ScratchDirectory();
        TokenizerFiles.VariantWithConfig(directory, TokenizerFiles.Qwen3Directory, _ => { });
        File.WriteAllText(Path.Combine(directory, "generation_config.json"), """{"eos_token_id": [151645, 151643], "top_k": 20}""");

        Assert.Equal([151643, 151645], HuggingFaceTokenizer.Load(directory).EndOfSequenceIds.Order());
    }

    [TokenizerFact]
    public void VocabularySizeCountsAddedTokens()
    {
        Assert.Equal(151669, TokenizerFiles.Qwen3.VocabularySize);
        Assert.Equal(128256, TokenizerFiles.Llama3.VocabularySize);
    }

    [TokenizerFact]
    public void IgnoreMergesTakesAWholePieceThatIsInTheVocabulary()
    {
        // Llama-3's merges split these vocabulary entries (e.g. " jeho" into 503, 2701, 78); ignore_merges keeps them whole.
        Assert.Equal([101503], TokenizerFiles.Llama3.Encode(" jeho"));
        Assert.Equal([101798], TokenizerFiles.Llama3.Encode(" Vi\u1EC7t"));
    }

    [TokenizerTheory]
    [InlineData("qwen3")]
    [InlineData("llama3")]
    public void LongPiecesMergeAsMicrosoftMLTokenizersDoes(string tokenizer)
    {
        // Pieces too long for the library's quadratic merging take our own loop, which must give the same ids.
        var encoder = TokenizerFiles.ByName(tokenizer).BytePairEncoder;
        var random = new Random(7);
        string RandomLetters(int count, char first, int range) =>
            string.Concat(Enumerable.Range(0, count).Select(_ => (char)(first + random.Next(range))));

        foreach (var piece in new[] { new string('q', 5000), RandomLetters(5000, 'a', 26), " " + RandomLetters(2000, '\u4E00', 3000), RandomLetters(3000, '\u0430', 32) })
        {
            Assert.Equal(encoder.MergeWithLibrary(piece), encoder.MergeLongPiece(piece));
        }
    }

    [TokenizerFact]
    public void HundredKilobyteTextsRoundTrip()
    {
        var text = new StringBuilder();
        for (var round = 0; text.Length < 100_000; round++)
        {
            // Texts that NFC leaves alone, so the decoded whole can be compared with the input.
            foreach (var entry in ReferenceData.Encodings("qwen3").Where(entry => entry.Decoded == entry.Text))
            {
                text.Append(entry.Text).Append(' ').Append(round).Append('\n');
            }
        }

        var words = string.Concat(Enumerable.Range(0, 20_000).Select(i => $"w{i * 7919 % 100_003:x} "));
        var oneLongWord = new string('q', 100_000);
        var subject = TokenizerFiles.Qwen3;

        // Speed is the benchmark's business; here only that long inputs come back whole.
        foreach (var input in new[] { text.ToString(), words, oneLongWord })
        {
            Assert.Equal(input, subject.Decode(subject.Encode(input).ToArray()));
        }
    }
}
