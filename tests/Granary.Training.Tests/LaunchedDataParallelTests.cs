using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;
using Granary.Models.Safetensors;
using Granary.Testing;

namespace Granary.Training.Tests;

/// <summary>
/// `granary launch -n 2 -- granary lora --train` (per-rank batch 2) against `granary lora --train` with batch 4: the
/// same losses at every step and the same saved adapters. Processes, the built-in model and its tokenizer.
/// </summary>
public sealed partial class LaunchedDataParallelTests : IDisposable
{
    private static readonly TimeSpan Limit = TimeSpan.FromMinutes(5);
    private readonly string _root = Directory.CreateTempSubdirectory("granary-launch-lora-").FullName;

    public void Dispose() => Directory.Delete(_root, recursive: true);

    [Fact]
    public void TwoLaunchedRanksOfBatchTwoMatchOneRankOfBatchFour()
    {
        var environment = new Dictionary<string, string> { ["GRANARY_CACHE"] = Path.Combine(_root, "cache") };
        var data = Path.Combine(_root, "data");
        Directory.CreateDirectory(data);
        var records = Enumerable.Range(0, 8).Select(i => JsonSerializer.Serialize(new { text = $"the harvest of field {i} came in {(i % 3 == 0 ? "early and dry" : "late")}" }));
        File.WriteAllLines(Path.Combine(data, "train.jsonl"), records);
        string[] Lora(int batchSize, string adapters) =>
        [
            "lora", "--data", data, "--train", "--iters", "3", "--batch-size", batchSize.ToString(CultureInfo.InvariantCulture),
            "--num-layers", "1", "--rank", "4", "--learning-rate", "0.01", "--steps-per-report", "1", "--max-seq-length", "24",
            "--threads", "1", "--adapter-path", adapters,
        ];

        // The single rank first: it writes the built-in model into the cache that both launched ranks then read.
        var singlePath = Path.Combine(_root, "single");
        var single = GranaryCli.Run(Limit, null, environment, Lora(4, singlePath));
        Assert.True(single.ExitCode == 0, single.ToString());
        var parallelPath = Path.Combine(_root, "parallel");
        var launched = GranaryCli.Run(Limit, null, environment, ["launch", "-n", "2", "--backend", "ring", "--", .. GranaryCli.Command, .. Lora(2, parallelPath)]);
        Assert.True(launched.ExitCode == 0, launched.ToString());

        var expectedLosses = Losses(single.Output);
        var actualLosses = Losses(launched.Output);
        Assert.Equal(3, expectedLosses.Length);
        Assert.Equal(expectedLosses.Length, actualLosses.Length);
        for (var step = 0; step < expectedLosses.Length; step++)
        {
            // Printed with three decimals.
            Assert.True(Math.Abs(expectedLosses[step] - actualLosses[step]) <= 1.5e-3, $"step {step + 1}: {actualLosses[step]} vs {expectedLosses[step]}\n{launched}");
        }

        using var expected = SafetensorsFile.Open(Path.Combine(singlePath, AdapterFiles.WeightsFileName));
        using var actual = SafetensorsFile.Open(Path.Combine(parallelPath, AdapterFiles.WeightsFileName));
        Assert.Equal(expected.Tensors.Keys.Order(StringComparer.Ordinal), actual.Tensors.Keys.Order(StringComparer.Ordinal));
        foreach (var name in expected.Tensors.Keys)
        {
            var error = Norms.RelativeError(MemoryMarshal.Cast<byte, float>(actual.GetBytes(name)), MemoryMarshal.Cast<byte, float>(expected.GetBytes(name)));
            Assert.True(error < 1e-4, $"{name}: relative difference {error:E2}");
        }
    }

    // "Iter 2: Train loss 5.123, ..." (launched: after the "[0] " prefix of rank 0, the only rank that reports).
    private static double[] Losses(string output) => [.. TrainLoss().Matches(output).Select(m => double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture))];

    [GeneratedRegex(@"Iter \d+: Train loss ([0-9.]+)")]
    private static partial Regex TrainLoss();
}
