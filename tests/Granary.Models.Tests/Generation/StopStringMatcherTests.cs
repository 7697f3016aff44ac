using Granary.Models.Generation;

namespace Granary.Models.Tests.Generation;

public sealed class StopStringMatcherTests
{
    [Fact]
    public void HoldsBackAPossibleStopStringAndCutsBeforeIt()
    {
        var matcher = new StopStringMatcher(["o w"]);

        Assert.Equal("Hel", matcher.Push("Hel"));
        Assert.Equal("l", matcher.Push("lo"));          // "o" could start "o w"
        Assert.Equal(string.Empty, matcher.Push(" wo")); // completes "o w": nothing after it comes out
        Assert.True(matcher.Stopped);
        Assert.Equal(string.Empty, matcher.Push("more"));
    }

    [Fact]
    public void ReleasesHeldTextWhenItStopsMatching()
    {
        var matcher = new StopStringMatcher(["</end>"]);

        Assert.Equal("a", matcher.Push("a</e"));
        Assert.Equal("</ex", matcher.Push("x"));
        Assert.False(matcher.Stopped);
        Assert.Equal("b</", matcher.Push("b</") + matcher.Flush());
    }

    [Fact]
    public void TheEarliestOfSeveralStopStringsWins()
    {
        var matcher = new StopStringMatcher(["END", "\n\n"]);

        Assert.Equal("one", matcher.Push("one\n\ntwo END"));
        Assert.True(matcher.Stopped);
    }

    [Fact]
    public void WithoutStopStringsTextPassesStraightThrough()
    {
        var matcher = new StopStringMatcher([]);
        Assert.Equal("abc", matcher.Push("abc"));
        Assert.Equal(string.Empty, matcher.Flush());
    }
}
