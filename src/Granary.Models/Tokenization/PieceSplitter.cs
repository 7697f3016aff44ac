using System.Globalization;
using System.Text;

namespace Granary.Models.Tokenization;

/// <summary>
/// Splits text into the pieces that BPE encodes, exactly as the Split pre-tokenizer regex of Qwen2/Qwen3 and
/// Llama-3 does. The regex is evaluated by hand on code points: .NET's Regex works on UTF-16 units and would
/// misclassify letters and digits outside the Basic Multilingual Plane (e.g. CJK Extension B).
/// </summary>
internal sealed class PieceSplitter
{
    /// <summary>Qwen2/Qwen3: every digit is its own piece.</summary>
    public const string QwenPattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Llama-3: digits in groups of up to three.</summary>
    public const string Llama3Pattern = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    private readonly int _maxDigitsPerPiece;

    private PieceSplitter(int maxDigitsPerPiece) => _maxDigitsPerPiece = maxDigitsPerPiece;

    public static PieceSplitter? ForPattern(string pattern) => pattern switch
    {
        QwenPattern => new PieceSplitter(1),
        Llama3Pattern => new PieceSplitter(3),
        _ => null,
    };

    /// <summary>Returns where the piece that starts at <paramref name="start"/> ends.</summary>
    public int PieceEnd(ReadOnlySpan<char> text, int start)
    {
        var first = Classify(text, start, out var firstWidth);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d)
        if (text[start] == '\'')
        {
            var contraction = ContractionLength(text[(start + 1)..]);
            if (contraction > 0)
            {
                return start + 1 + contraction;
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (first == CharClass.Letter)
        {
            return RunEnd(text, start, CharClass.Letter);
        }

        var mayPrefixLetters = first == CharClass.Other || (first == CharClass.Space && text[start] is not ('\r' or '\n'));
        if (mayPrefixLetters && start + firstWidth < text.Length
            && Classify(text, start + firstWidth, out _) == CharClass.Letter)
        {
            return RunEnd(text, start + firstWidth, CharClass.Letter);
        }

        // \p{N} or \p{N}{1,3}
        if (first == CharClass.Number)
        {
            var end = start;
            for (var digits = 0; digits < _maxDigitsPerPiece && end < text.Length && Classify(text, end, out var width) == CharClass.Number; digits++)
            {
                end += width;
            }

            return end;
        }

        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        var symbolsStart = text[start] == ' ' && start + 1 < text.Length && Classify(text, start + 1, out _) == CharClass.Other
            ? start + 1
            : first == CharClass.Other ? start : -1;
        if (symbolsStart >= 0)
        {
            var end = RunEnd(text, symbolsStart, CharClass.Other);
            while (end < text.Length && text[end] is '\r' or '\n')
            {
                end++;
            }

            return end;
        }

        // What is left starts with white space; every white-space character is in the BMP.
        var spaceEnd = start;
        while (spaceEnd < text.Length && IsWhiteSpace(text[spaceEnd]))
        {
            spaceEnd++;
        }

        // \s*[\r\n]+ : through the last line break of the run.
        var lastLineBreak = text[start..spaceEnd].LastIndexOfAny('\r', '\n');
        if (lastLineBreak >= 0)
        {
            return start + lastLineBreak + 1;
        }

        // \s+(?!\S) : all of a run that ends the text, else the run less its last character; a lone space is \s+.
        if (spaceEnd == text.Length || spaceEnd - start == 1)
        {
            return spaceEnd;
        }

        return spaceEnd - 1;
    }

    private static int ContractionLength(ReadOnlySpan<char> rest)
    {
        if (rest.IsEmpty)
        {
            return 0;
        }

        var c = char.ToLowerInvariant(rest[0]);
        if (c is 's' or 't' or 'm' or 'd')
        {
            return 1;
        }

        if (rest.Length >= 2)
        {
            var second = char.ToLowerInvariant(rest[1]);
            if ((c, second) is ('r', 'e') or ('v', 'e') or ('l', 'l'))
            {
                return 2;
            }
        }

        return 0;
    }

    private static int RunEnd(ReadOnlySpan<char> text, int start, CharClass charClass)
    {
        var end = start;
        while (end < text.Length && Classify(text, end, out var width) == charClass)
        {
            end += width;
        }

        return end;
    }

    private static CharClass Classify(ReadOnlySpan<char> text, int index, out int width)
    {
        if (Rune.DecodeFromUtf16(text[index..], out var rune, out width) != System.Buffers.OperationStatus.Done)
        {
            return CharClass.Other;
        }

        if (rune.IsBmp && IsWhiteSpace((char)rune.Value))
        {
            return CharClass.Space;
        }

        return Rune.GetUnicodeCategory(rune) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => CharClass.Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => CharClass.Number,
            _ => CharClass.Other,
        };
    }

    /// <summary>The Unicode White_Space property, which is what \s matches in the tokenizers' regex engine.</summary>
    private static bool IsWhiteSpace(char c) => c switch
    {
        >= '\t' and <= '\r' or ' ' or '\u0085' or '\u00A0' or '\u1680' => true,
        >= '\u2000' and <= '\u200A' or '\u2028' or '\u2029' or '\u202F' or '\u205F' or '\u3000' => true,
        _ => false,
    };

    private enum CharClass
    {
        Letter,
        Number,
        Space,
        Other,
    }
}
