using System.Diagnostics;
using System.Globalization;
using Granary.Models;
using Granary.Models.Batching;
using Granary.Models.BuiltIn;
using Granary.Models.Generation;
using Granary.Tensors;

namespace Granary.Bench;

/// <summary>
/// `batching`: output tokens/s of the continuous-batching engine with N concurrent requests, beside the same requests
/// served one at a time by <see cref="TextGenerator"/> on the same model in the same run, and their ratio.
/// </summary>
internal static class BatchingBenchmark
{
    public static int Run(string[] args)
    {
        var clients = (Option(args, "--clients") ?? "1,4,16").Split(',').Select(c => int.Parse(c, CultureInfo.InvariantCulture)).ToArray();
        var tokens = IntOption(args, "--tokens", 32);
        var promptTokens = IntOption(args, "--prompt", 32);
        var threads = IntOption(args, "--threads", Environment.ProcessorCount);
        var backendName = Option(args, "--backend") ?? "cpu";
        var directory = Option(args, "--model") ?? BuiltInModel.EnsureCreated(Console.Out);

        using var backend = ComputeBackends.Create(backendName, threads);
        using var loaded = ModelLoader.Load(directory, backend);
        var model = loaded.Model;
        Console.WriteLine($"{Path.GetFileName(directory)} on {backend.Name} ({threads} threads): prompts of {promptTokens} tokens, {tokens} output tokens each, greedy");

        // Warm-up of both paths, long enough for tiered JIT to reach the kernels' final code: neither side pays for it.
        OneAtATime(model, Requests(model, 2, promptTokens, tokens));
        Batched(loaded, Requests(model, 4, promptTokens, tokens), 4);

        // Each side is measured three times, one-at-a-time and batched runs interleaved, and its best run kept, so
        // drift in the machine's speed (clocks, JIT, neighbours) flatters neither side.
        const int Repeats = 3;
        var baseline = 0.0;
        var expected = Array.Empty<int[]>();
        var best = new Dictionary<int, (double Rate, double MeanBatch, long Steps, TimeSpan FirstToken, int[][] Tokens)>();
        for (var repeat = 0; repeat < Repeats; repeat++)
        {
            var (rate, tokensAlone) = OneAtATime(model, Requests(model, 4, promptTokens, tokens));
            (baseline, expected) = rate > baseline ? (rate, tokensAlone) : (baseline, expected);
            foreach (var count in clients)
            {
                var result = Batched(loaded, Requests(model, count, promptTokens, tokens), count);
                if (!best.TryGetValue(count, out var kept) || result.Rate > kept.Rate)
                {
                    best[count] = result;
                }
            }
        }

        Console.WriteLine($"Best of {Repeats} runs of each; one at a time = 4 requests served in turn by TextGenerator.");
        Console.WriteLine();
        Console.WriteLine("| concurrent requests | output tok/s | x one at a time | mean batch | steps | time to first token p50 | same tokens as alone |");
        Console.WriteLine("|---:|---:|---:|---:|---:|---:|---:|");
        Console.WriteLine($"| 1 at a time | {baseline:F1} | 1.00 | 1.0 | - | - | - |");
        foreach (var count in clients)
        {
            var (rate, meanBatch, steps, firstToken, outputs) = best[count];
            var compared = Math.Min(count, expected.Length);
            var same = Enumerable.Range(0, compared).Count(i => outputs[i].SequenceEqual(expected[i]));
            Console.WriteLine(
                $"| {count} | {rate:F1} | {rate / baseline:F2} | {meanBatch:F1} | {steps} | {firstToken.TotalMilliseconds:F0} ms | {same}/{compared} |");
        }

        return 0;
    }

    private static GenerationRequest[] Requests(CausalLanguageModel model, int count, int promptTokens, int tokens)
    {
        var vocabulary = model.Config.VocabularySize;
        return [.. Enumerable.Range(0, count).Select(r => new GenerationRequest
        {
            // Distinct prompts, so the prompt cache does not help the batched side.
            PromptIds = [.. Enumerable.Range(0, promptTokens).Select(i => ((r * 7919) + (i * 104729) + 1) % vocabulary)],
            MaxTokens = tokens,
            Sampling = SamplingOptions.Greedy,
            StopAtEndOfSequence = false,
        })];
    }

    private static (double Rate, int[][] Tokens) OneAtATime(CausalLanguageModel model, GenerationRequest[] requests)
    {
        var generator = new TextGenerator(model, null, new HashSet<int>());
        var clock = Stopwatch.StartNew();
        var tokens = requests.Select(r => generator.Generate(r).Select(t => t.Id).ToArray()).ToArray();
        return (tokens.Sum(t => t.Length) / clock.Elapsed.TotalSeconds, tokens);
    }

    private static (double Rate, double MeanBatch, long Steps, TimeSpan FirstToken, int[][] Tokens) Batched(
        LoadedModel loaded, GenerationRequest[] requests, int slots)
    {
        var options = new BatchingOptions { MaxBatchSize = slots, PromptCacheEntries = 0 };
        var engine = new BatchingEngine(loaded.Model, null, new HashSet<int>(), options);
        try
        {
            var clock = Stopwatch.StartNew();
            var firstTokens = new TimeSpan[requests.Length];
            var streams = requests.Select(async (request, i) =>
            {
                var produced = new List<int>();
                await foreach (var token in engine.GenerateAsync(request))
                {
                    if (produced.Count == 0)
                    {
                        firstTokens[i] = clock.Elapsed;
                    }

                    produced.Add(token.Id);
                }

                return produced.ToArray();
            }).ToArray();
            var outputs = Task.WhenAll(streams).GetAwaiter().GetResult();
            var elapsed = clock.Elapsed;
            var snapshot = engine.Snapshot();
            Array.Sort(firstTokens);
            return (outputs.Sum(o => o.Length) / elapsed.TotalSeconds, (double)snapshot.GeneratedTokens / snapshot.Steps, snapshot.Steps,
                firstTokens[firstTokens.Length / 2], outputs);
        }
        finally
        {
            engine.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }

    private static int IntOption(string[] args, string name, int fallback) =>
        Option(args, name) is { } text ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;
}
