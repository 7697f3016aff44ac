using System.Runtime.Intrinsics;
using Granary.Tensors.Numerics;

namespace Granary.Tensors.Tests;

public sealed class ConversionTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(37)]
    [InlineData(100)]
    public void SingleToBFloat16RoundsToNearestEven(int length)
    {
        var random = new Random(length);
        var values = new float[length];
        for (var i = 0; i < length; i++)
        {
            // Random bit patterns reach every exponent; a few exact halfway cases and specials are mixed in.
            values[i] = (i % 7) switch
            {
                0 => BitConverter.Int32BitsToSingle(0x3F80_8000), // 1 + 2^-8: halfway, rounds down to even
                1 => BitConverter.Int32BitsToSingle(0x3F81_8000), // halfway, rounds up to even
                2 => float.PositiveInfinity,
                3 => BitConverter.Int32BitsToSingle(0x7F7F_FFFF), // largest finite overflows to infinity
                _ => BitConverter.Int32BitsToSingle(random.Next() ^ (random.Next(2) << 31)),
            };
        }

        var bits = new ushort[length];
        FloatConversion.SingleToBFloat16(values, bits);
        var back = new float[length];
        FloatConversion.BFloat16ToSingle(bits, back);

        for (var i = 0; i < length; i++)
        {
            if (float.IsNaN(values[i]))
            {
                Assert.True(float.IsNaN(back[i]));
                continue;
            }

            Assert.Equal(NearestBFloat16(values[i]), back[i]);
            Assert.Equal(bits[i], FloatConversion.SingleToBFloat16(values[i]));
        }
    }

    [Fact]
    public void BFloat16NaNStaysNaN()
    {
        var bits = new ushort[40];
        FloatConversion.SingleToBFloat16(Enumerable.Repeat(BitConverter.Int32BitsToSingle(0x7F80_0001), 40).ToArray(), bits);
        Assert.All(bits, b => Assert.True(float.IsNaN(FloatConversion.BFloat16ToSingle(b))));
    }

    [Fact]
    public void VectorHalfToSingleMatchesTheRuntimeForAllBitPatterns()
    {
        var lanes = new uint[16];
        var converted = new float[16];
        for (var start = 0; start < 65536; start += 16)
        {
            for (var j = 0; j < 16; j++)
            {
                lanes[j] = (uint)(start + j);
            }

            var wide = FloatConversion.HalfToSingle(Vector512.Create(lanes));
            var narrow = FloatConversion.HalfToSingle(Vector256.Create(lanes.AsSpan(0, 8)));
            wide.CopyTo(converted);
            for (var j = 0; j < 16; j++)
            {
                var expected = (float)BitConverter.UInt16BitsToHalf((ushort)(start + j));
                Assert.True(expected.Equals(converted[j]), $"f16 0x{start + j:X4}: expected {expected}, got {converted[j]}");
                if (j < 8)
                {
                    Assert.True(expected.Equals(narrow[j]), $"f16 0x{start + j:X4} (Vector256): expected {expected}, got {narrow[j]}");
                }
            }
        }
    }

    [Fact]
    public void HalfSpanConversionRoundTrips()
    {
        var values = TestData.Random(45, 3, 100f);
        var halves = new Half[45];
        FloatConversion.SingleToHalf(values, halves);
        var back = new float[45];
        FloatConversion.HalfToSingle(halves, back);
        for (var i = 0; i < values.Length; i++)
        {
            Assert.Equal((float)(Half)values[i], back[i]);
        }
    }

    /// <summary>
    /// The bf16 value nearest to <paramref name="value"/>, ties to an even mantissa: compares, in double, the value truncated
    /// to bf16 and the next bf16 away from zero (one bf16 ulp further; past the largest finite value that is infinity).
    /// </summary>
    private static float NearestBFloat16(float value)
    {
        var bits = BitConverter.SingleToUInt32Bits(value);
        var truncatedBits = bits & 0xFFFF_0000u;
        if (truncatedBits == bits)
        {
            return value; // Exactly representable, infinities included.
        }

        var truncated = BitConverter.UInt32BitsToSingle(truncatedBits);
        var exponent = Math.Max((int)((bits >> 23) & 0xFF), 1);
        var ulp = Math.Pow(2, exponent - 127 - 7);
        var distanceToTruncated = Math.Abs((double)value - truncated);
        var distanceToNext = ulp - distanceToTruncated;
        var next = BitConverter.UInt32BitsToSingle(truncatedBits + 0x1_0000u);
        if (distanceToTruncated != distanceToNext)
        {
            return distanceToTruncated < distanceToNext ? truncated : next;
        }

        return ((bits >> 16) & 1) == 0 ? truncated : next;
    }
}
