using System.Text;

namespace Granary.Models.Generation;

/// <summary>
/// Holds back streamed text that could still become a stop string, so a client never sees part of one.
/// </summary>
public sealed class StopStringMatcher(IReadOnlyList<string> stopStrings)
{
    private readonly StringBuilder _pending = new();

    public bool Stopped { get; private set; }

    /// <summary>Adds new text and returns what is safe to emit now.</summary>
    public string Push(string text)
    {
        if (Stopped || text.Length == 0)
        {
            return string.Empty;
        }

        if (stopStrings.Count == 0)
        {
            return text;
        }

        _pending.Append(text);
        var pending = _pending.ToString();
        var stopAt = -1;
        foreach (var stop in stopStrings)
        {
            var index = pending.IndexOf(stop, StringComparison.Ordinal);
            if (index >= 0 && (stopAt < 0 || index < stopAt))
            {
                stopAt = index;
            }
        }

        if (stopAt >= 0)
        {
            Stopped = true;
            _pending.Clear();
            return pending[..stopAt];
        }

        var keep = LongestSuffixThatStartsAStopString(pending);
        _pending.Remove(0, pending.Length - keep);
        return pending[..^keep];
    }

    /// <summary>Releases text held back (generation ended without completing a stop string).</summary>
    public string Flush()
    {
        var rest = _pending.ToString();
        _pending.Clear();
        return rest;
    }

    private int LongestSuffixThatStartsAStopString(string text)
    {
        var longest = 0;
        foreach (var stop in stopStrings)
        {
            for (var length = Math.Min(stop.Length - 1, text.Length); length > longest; length--)
            {
                if (text.AsSpan(text.Length - length).SequenceEqual(stop.AsSpan(0, length)))
                {
                    longest = length;
                    break;
                }
            }
        }

        return longest;
    }
}
