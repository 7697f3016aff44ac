namespace Granary.Models.Tests.Reference;

/// <summary>Comparisons of logit rows shared by the reference, sharding and batching tests.</summary>
internal static class LogitChecks
{
    /// <summary>The first index of the largest value (greedy decoding's choice).</summary>
    public static int ArgMax(ReadOnlySpan<float> values)
    {
        var best = 0;
        for (var i = 1; i < values.Length; i++)
        {
            if (values[i] > values[best])
            {
                best = i;
            }
        }

        return best;
    }

    /// <summary>Fails with the worst position and both values when any |expected - actual| reaches <paramref name="tolerance"/> (or is NaN).</summary>
    public static void AssertClose(ReadOnlySpan<float> expected, ReadOnlySpan<float> actual, float tolerance, string what)
    {
        Assert.Equal(expected.Length, actual.Length);
        var worst = 0f;
        var at = 0;
        for (var i = 0; i < expected.Length; i++)
        {
            var difference = Math.Abs(expected[i] - actual[i]);
            if (!(difference <= worst))
            {
                (worst, at) = (difference, i);
            }
        }

        Assert.True(worst < tolerance, $"{what}: max |difference| = {worst} at id {at} (expected {expected[at]}, got {actual[at]}).");
    }
}
