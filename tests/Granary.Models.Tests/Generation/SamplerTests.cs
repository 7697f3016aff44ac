using Granary.Models.Generation;

namespace Granary.Models.Tests.Generation;

public sealed class SamplerTests
{
    [Fact]
    public void GreedyPicksTheLargestLogit()
    {
        var sampler = new Sampler(SamplingOptions.Greedy, 5);
        float[] logits = [0.1f, 2.5f, -1f, 2.4f, 0f];
        Assert.Equal(1, sampler.Sample(logits, []));
    }

    [Fact]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOncePerToken()
    {
        var sampler = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 2f }, 4);
        float[] logits = [3f, -1f, 2f, 1.9f];

        // Token 0 appears twice: still divided once (3 / 2 = 1.5), so token 2 (2.0) wins.
        var next = sampler.Sample(logits, [0, 1, 0]);

        Assert.Equal(2, next);
        Assert.Equal([1.5f, -2f, 2f, 1.9f], logits);
    }

    [Fact]
    public void RepetitionPenaltyOnlyLooksAtTheContextWindow()
    {
        var sampler = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 10f, RepetitionContextSize = 1 }, 3);
        float[] logits = [5f, 4f, 0f];

        // Token 0 is outside the one-token window, token 1 inside.
        Assert.Equal(0, sampler.Sample(logits, [0, 1]));
        Assert.Equal(0.4f, logits[1], 6);
    }

    [Fact]
    public void TopKSamplesOnlyTheKMostLikelyInProportion()
    {
        float[] logits = [1f, 3f, 0.5f, 2.5f, -2f, 2.9f];
        var counts = Draw(new SamplingOptions { TopK = 2, Seed = 7 }, logits, 20_000);

        Assert.Equal(0, counts[0] + counts[2] + counts[3] + counts[4]);

        // Renormalised softmax over logits 3 and 2.9: p(1) = 1 / (1 + e^-0.1).
        var expected = 1 / (1 + Math.Exp(-0.1));
        Assert.InRange(counts[1] / 20_000.0, expected - 0.02, expected + 0.02);
    }

    [Fact]
    public void TopPKeepsTheSmallestSetReachingP()
    {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var counts = Draw(new SamplingOptions { TopP = 0.8f, Seed = 3 }, logits, 10_000);

        Assert.Equal(0, counts[2] + counts[3]);
        Assert.InRange(counts[0] / 10_000.0, 0.625 - 0.02, 0.625 + 0.02);
    }

    [Fact]
    public void MinPDropsTokensBelowTheFractionOfTheBest()
    {
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        var counts = Draw(new SamplingOptions { MinP = 0.4f, Seed = 11 }, logits, 5_000);

        // Floor 0.4 * 0.5 = 0.2 keeps tokens 0 and 1 only.
        Assert.Equal(0, counts[2] + counts[3]);
        Assert.True(counts[0] > 0 && counts[1] > 0);
    }

    [Fact]
    public void TopPOverALargeVocabularyMatchesAFullSortNucleus()
    {
        const int vocabulary = 50_000;
        var random = new Random(5);
        var logits = new float[vocabulary];
        for (var i = 0; i < vocabulary; i++)
        {
            logits[i] = (float)(random.NextDouble() * 4);
        }

        const float topP = 0.3f;
        var nucleus = NaiveNucleus(logits, topP);
        var counts = Draw(new SamplingOptions { TopP = topP, Seed = 1 }, logits, 3_000);

        for (var id = 0; id < vocabulary; id++)
        {
            if (counts[id] > 0)
            {
                Assert.Contains(id, nucleus);
            }
        }
    }

    [Fact]
    public void TemperatureZeroIsGreedyEvenWithFilters()
    {
        var sampler = new Sampler(new SamplingOptions { Temperature = 0, TopK = 1, TopP = 0.1f }, 3);
        Assert.Equal(2, sampler.Sample([0f, 1f, 5f], []));
    }

    [Theory]
    [InlineData(-0.5f, 1f, 0, 0f, 1f)]
    [InlineData(1f, 0f, 0, 0f, 1f)]
    [InlineData(1f, 1.5f, 0, 0f, 1f)]
    [InlineData(1f, 1f, -1, 0f, 1f)]
    [InlineData(1f, 1f, 0, 1f, 1f)]
    [InlineData(1f, 1f, 0, 0f, 0f)]
    public void OutOfRangeOptionsAreRejected(float temperature, float topP, int topK, float minP, float penalty)
    {
        var options = new SamplingOptions { Temperature = temperature, TopP = topP, TopK = topK, MinP = minP, RepetitionPenalty = penalty };
        Assert.Throws<ArgumentException>(() => new Sampler(options, 10));
    }

    private static int[] Draw(SamplingOptions options, float[] logits, int draws)
    {
        var sampler = new Sampler(options, logits.Length);
        var counts = new int[logits.Length];
        var scratch = new float[logits.Length];
        for (var i = 0; i < draws; i++)
        {
            logits.CopyTo(scratch, 0);
            counts[sampler.Sample(scratch, [])]++;
        }

        return counts;
    }

    private static HashSet<int> NaiveNucleus(float[] logits, float topP)
    {
        var max = logits.Max();
        var weights = logits.Select(l => Math.Exp(l - max)).ToArray();
        var total = weights.Sum();
        var order = Enumerable.Range(0, logits.Length).OrderByDescending(i => weights[i]).ToArray();
        var nucleus = new HashSet<int>();
        var cumulative = 0.0;
        foreach (var id in order)
        {
            nucleus.Add(id);
            cumulative += weights[id] / total;
            if (cumulative >= topP)
            {
                break;
            }
        }

        return nucleus;
    }
}
