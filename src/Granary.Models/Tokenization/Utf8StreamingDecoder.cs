using System.Text;

namespace Granary.Models.Tokenization;

/// <summary>
/// Decodes ids one at a time, holding back the bytes of a character that is not complete yet
/// (a byte-level token can end in the middle of a multi-byte UTF-8 sequence, e.g. inside an emoji).
/// </summary>
internal sealed class Utf8StreamingDecoder(HuggingFaceTokenizer tokenizer, bool skipSpecialTokens) : IStreamingDecoder
{
    private readonly List<byte> _pending = [];

    public string Push(int id)
    {
        _pending.AddRange(tokenizer.TokenBytes(id, skipSpecialTokens));
        var complete = CompleteLength(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending));
        return Take(complete);
    }

    public string Flush() => Take(_pending.Count);

    private string Take(int count)
    {
        if (count == 0)
        {
            return "";
        }

        var text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending)[..count]);
        _pending.RemoveRange(0, count);
        return text;
    }

    /// <summary>The length of the prefix that does not end inside a UTF-8 sequence that more bytes could still complete.</summary>
    private static int CompleteLength(ReadOnlySpan<byte> bytes)
    {
        // A sequence is at most 4 bytes, so only the last 3 can belong to an unfinished one.
        for (var back = 1; back <= Math.Min(3, bytes.Length); back++)
        {
            var b = bytes[^back];
            if ((b & 0xC0) == 0x80)
            {
                continue;
            }

            var needed = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
            return needed > back ? bytes.Length - back : bytes.Length;
        }

        return bytes.Length;
    }
}
