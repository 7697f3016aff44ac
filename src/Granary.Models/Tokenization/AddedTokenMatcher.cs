using System.Buffers;
using System.Diagnostics.CodeAnalysis;

namespace Granary.Models.Tokenization;

/// <summary>A token from tokenizer.json's added_tokens: matched in text before BPE and never split.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool LeftStrip, bool RightStrip);

/// <summary>Finds added tokens in text, leftmost first and longest among those starting at the same place.</summary>
internal sealed class AddedTokenMatcher
{
    private readonly Dictionary<char, AddedToken[]> _byFirstChar;
    private readonly SearchValues<char> _firstChars;

    public AddedTokenMatcher(IEnumerable<AddedToken> tokens)
    {
        _byFirstChar = tokens
            .Where(token => token.Content.Length > 0)
            .GroupBy(token => token.Content[0])
            .ToDictionary(group => group.Key, group => group.OrderByDescending(token => token.Content.Length).ToArray());
        _firstChars = SearchValues.Create([.. _byFirstChar.Keys]);
    }

    /// <summary>
    /// Finds the next added token at or after <paramref name="from"/>. The match covers the token and, for
    /// lstrip/rstrip tokens, the white space they absorb (never reaching back before <paramref name="from"/>).
    /// </summary>
    public bool TryFindNext(ReadOnlySpan<char> text, int from, out int matchStart, out int matchEnd, [NotNullWhen(true)] out AddedToken? token)
    {
        for (var position = from; position < text.Length; position++)
        {
            var offset = text[position..].IndexOfAny(_firstChars);
            if (offset < 0)
            {
                break;
            }

            position += offset;
            foreach (var candidate in _byFirstChar[text[position]])
            {
                if (!text[position..].StartsWith(candidate.Content, StringComparison.Ordinal))
                {
                    continue;
                }

                matchStart = position;
                matchEnd = position + candidate.Content.Length;
                while (candidate.LeftStrip && matchStart > from && char.IsWhiteSpace(text[matchStart - 1]))
                {
                    matchStart--;
                }

                while (candidate.RightStrip && matchEnd < text.Length && char.IsWhiteSpace(text[matchEnd]))
                {
                    matchEnd++;
                }

                token = candidate;
                return true;
            }
        }

        matchStart = matchEnd = text.Length;
        token = null;
        return false;
    }
}
