using System.Text;

namespace Granary.Models.Tokenization;

/// <summary>
/// A byte-level BPE tokenizer read from a Hugging Face model folder (tokenizer.json and its companions),
/// producing the same ids as the Hugging Face tokenizers library for the Qwen2/Qwen3 and Llama-3 families.
/// Safe to use from several threads at once.
/// </summary>
public sealed partial class HuggingFaceTokenizer : ITextTokenizer
{
    private readonly BytePairEncoder _bytePairEncoder;
    private readonly PieceSplitter _pieceSplitter;
    private readonly bool _normalizeNfc;
    private readonly AddedTokenMatcher _addedTokens;
    private readonly int[] _prefixIds;
    private readonly int[] _suffixIds;
    private readonly byte[] _tokenBytes;
    private readonly int[] _tokenByteOffsets;
    private readonly bool[] _isSpecial;
    private readonly ChatFormat? _chatFormat;
    private readonly string _chatFormatUnavailableReason;

    public int VocabularySize => _isSpecial.Length;

    public IReadOnlySet<int> EndOfSequenceIds { get; }

    public bool HasChatTemplate => _chatFormat is not null;

    /// <summary>The BPE stage, for tests that compare its two merge paths.</summary>
    internal BytePairEncoder BytePairEncoder => _bytePairEncoder;

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        return Encode(text.AsSpan(), addSpecialTokens);
    }

    /// <summary>Encodes text; added tokens written in the text (e.g. "&lt;|im_start|&gt;") map to their ids.</summary>
    public IReadOnlyList<int> Encode(ReadOnlySpan<char> text, bool addSpecialTokens = false)
    {
        var ids = new List<int>(text.Length / 3 + 4);
        if (addSpecialTokens)
        {
            ids.AddRange(_prefixIds);
        }

        var position = 0;
        while (position < text.Length)
        {
            var found = _addedTokens.TryFindNext(text, position, out var matchStart, out var matchEnd, out var token);
            EncodeOrdinaryText(text[position..matchStart], ids);
            if (!found)
            {
                break;
            }

            ids.Add(token!.Id);
            position = matchEnd;
        }

        if (addSpecialTokens)
        {
            ids.AddRange(_suffixIds);
        }

        return ids;
    }

    /// <summary>Decodes ids to text. Ids the tokenizer does not know decode to nothing, as in Hugging Face's decoder.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var length = 0;
        foreach (var id in ids)
        {
            length += TokenBytes(id, skipSpecialTokens).Length;
        }

        var bytes = length <= 1024 ? stackalloc byte[length] : new byte[length];
        var written = 0;
        foreach (var id in ids)
        {
            var token = TokenBytes(id, skipSpecialTokens);
            token.CopyTo(bytes[written..]);
            written += token.Length;
        }

        return Encoding.UTF8.GetString(bytes);
    }

    public IStreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = true) => new Utf8StreamingDecoder(this, skipSpecialTokens);

    public string ApplyChatTemplate(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = true, bool enableThinking = false)
    {
        if (_chatFormat is null)
        {
            throw new NotSupportedException(_chatFormatUnavailableReason);
        }

        return _chatFormat.Render(messages, addGenerationPrompt, enableThinking);
    }

    /// <summary>The UTF-8 bytes one id stands for; empty for unknown ids and for special tokens when skipped.</summary>
    internal ReadOnlySpan<byte> TokenBytes(int id, bool skipSpecialTokens)
    {
        if ((uint)id >= (uint)_isSpecial.Length || (skipSpecialTokens && _isSpecial[id]))
        {
            return [];
        }

        return _tokenBytes.AsSpan(_tokenByteOffsets[id], _tokenByteOffsets[id + 1] - _tokenByteOffsets[id]);
    }

    private void EncodeOrdinaryText(ReadOnlySpan<char> text, List<int> ids)
    {
        if (text.IsEmpty)
        {
            return;
        }

        if (_normalizeNfc && !Ascii.IsValid(text))
        {
            text = text.ToString().Normalize(NormalizationForm.FormC);
        }

        for (var start = 0; start < text.Length;)
        {
            var end = _pieceSplitter.PieceEnd(text, start);
            _bytePairEncoder.Encode(text[start..end], ids);
            start = end;
        }
    }
}
