namespace Granary.Models.Tests.Tokenization;

public sealed class StreamingDecoderTests
{
    [TokenizerTheory]
    [InlineData("qwen3")]
    [InlineData("llama3")]
    public void EmojiSplitAcrossTokensComesOutWhole(string tokenizer)
    {
        const string text = "Family 👩‍👩‍👧‍👦, coder 👨🏿‍💻, thumbs 👍🏽 and 𠀀!";
        var subject = TokenizerFiles.ByName(tokenizer);
        var ids = subject.Encode(text);
        Assert.Contains(ids, id => subject.Decode([id]).Contains('\uFFFD')); // some token ends inside a character

        var decoder = subject.CreateStreamingDecoder();
        var pieces = ids.Select(decoder.Push).Append(decoder.Flush()).ToList();

        Assert.DoesNotContain(pieces, piece => piece.Contains('\uFFFD'));
        Assert.Contains("", pieces.SkipLast(1)); // held back while a character was incomplete
        Assert.Equal(text, string.Concat(pieces));
    }

    [TokenizerTheory]
    [MemberData(nameof(HuggingFaceTokenizerReferenceTests.CorpusEntries), MemberType = typeof(HuggingFaceTokenizerReferenceTests))]
    public void StreamedTextMatchesHuggingFaceDecode(string tokenizer, int index)
    {
        var expected = ReferenceData.Encodings(tokenizer)[index];
        var subject = TokenizerFiles.ByName(tokenizer);

        Assert.Equal(expected.DecodedSkipSpecial, Stream(subject.CreateStreamingDecoder(), expected.IdsWithSpecial));
        Assert.Equal(expected.Decoded, Stream(subject.CreateStreamingDecoder(skipSpecialTokens: false), expected.IdsWithSpecial));
    }

    [TokenizerFact]
    public void FlushReplacesAnUnfinishedCharacter()
    {
        var subject = TokenizerFiles.Qwen3;
        var ids = subject.Encode("Family 👩‍👩‍👧‍👦").ToArray();
        var cut = Enumerable.Range(1, ids.Length).First(count => subject.Decode(ids.AsSpan(0, count)).EndsWith('\uFFFD'));
        var decoder = subject.CreateStreamingDecoder();

        var pushed = string.Concat(ids.Take(cut).Select(decoder.Push));
        var flushed = decoder.Flush();

        Assert.DoesNotContain('\uFFFD', pushed);
        Assert.EndsWith("\uFFFD", flushed);
        Assert.Equal(subject.Decode(ids.AsSpan(0, cut)), pushed + flushed);
    }

    private static string Stream(Granary.Models.Tokenization.IStreamingDecoder decoder, IEnumerable<int> ids) =>
        string.Concat(ids.Select(decoder.Push)) + decoder.Flush();
}
