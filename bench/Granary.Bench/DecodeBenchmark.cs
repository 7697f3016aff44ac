using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Granary.Models;
using Granary.Models.Safetensors;
using Granary.Tensors;

namespace Granary.Bench;

/// <summary>
/// `decode`: prefill and decode tokens/s of a Qwen3-0.6B-shaped model with generated weights (bf16 and MLX 4-bit)
/// on the CPU backend, beside the roofline: measured memory read bandwidth over the weight bytes read per token.
/// Decode tok/s is the median of `--runs` runs (5 by default) after an untimed one, and each run is also judged against
/// bandwidth probed right next to it: the machine it was written for is shared and noisy, and a single run swings by a
/// quarter. `--profile` adds, from separate runs, the median time of every operation of a step (<see cref="ProfilingBackend"/>).
/// </summary>
internal static class DecodeBenchmark
{
    private const int Hidden = 1024;
    private const int Heads = 16;
    private const int KeyValueHeads = 8;
    private const int HeadDim = 128;
    private const int Intermediate = 3072;
    private const int Vocabulary = 151936;

    /// <summary>Seconds of untimed decode runs before the timed ones (see <see cref="Measure"/>).</summary>
    private const double WarmUpSeconds = 4;

    public static int Run(string[] args)
    {
        var layers = IntOption(args, "--layers", 28);
        var promptTokens = IntOption(args, "--prompt", 128);
        var decodeTokens = IntOption(args, "--tokens", 32);
        var threads = IntOption(args, "--threads", Environment.ProcessorCount);
        var runs = Math.Max(1, IntOption(args, "--runs", 5));
        var formats = (Option(args, "--formats") ?? "bf16,q4").Split(',');
        var profile = args.Contains("--profile");

        Console.WriteLine($"Qwen3-0.6B shape: {layers} layers, hidden {Hidden}, vocab {Vocabulary}; {threads} threads; " +
                          $"prompt {promptTokens}, decode {decodeTokens} tokens, median of {runs} decode runs");

        // The roofline is probed before the first and after every decode run. A run is judged against the better of the
        // probes on either side of it: the machine this was written for shares its memory with other tenants, whose load
        // moves both the probe and decode by a quarter within seconds, so only a probe next to a run measures what that
        // run could have had. The best probe of the whole benchmark is printed beside it as the strictest roofline.
        using var probe = new MemoryBandwidthProbe(threads);
        var results = new List<(string Format, long Bytes, double Prefill, DecodeRun[] Decode)>();
        foreach (var format in formats)
        {
            var directory = Path.Combine(Path.GetTempPath(), $"granary-bench-qwen3-{format}-{layers}");
            if (!File.Exists(Path.Combine(directory, "model.safetensors")))
            {
                WriteModel(directory, layers, format);
            }

            var cpu = ComputeBackends.Create("cpu", threads);
            using var backend = profile ? new ProfilingBackend(cpu) : cpu;
            using var loaded = ModelLoader.Load(directory, backend);
            var (prefill, decode) = Measure(loaded.Model, probe, promptTokens, decodeTokens, runs);
            results.Add((format, loaded.Model.WeightBytes, prefill, decode));
            if (backend is ProfilingBackend profiling)
            {
                // Separate runs, so the timers' own cost stays out of the numbers above.
                Console.WriteLine($"{format}: operations of {runs} decode runs of {decodeTokens} tokens, timed one by one");
                profiling.Recording = true;
                var profiled = Measure(loaded.Model, probe, promptTokens, decodeTokens, runs, warmUpSeconds: 0, profiling.Reset).Decode;
                profiling.Recording = false;
                // The mean step of the profiled runs, as the per-call means are over all of their calls.
                profiling.Print(runs * decodeTokens, profiled.Average(run => 1 / run.TokensPerSecond));
                Console.WriteLine();
            }
        }

        var best = results.SelectMany(r => r.Decode).Select(run => run.Bandwidth).Aggregate(MemoryBandwidth.Better);
        Console.WriteLine($"Measured memory read bandwidth: best {best.GigabytesPerSecond:F1} GB/s ({best.Method}), probed next to every decode run");
        Console.WriteLine();
        Console.WriteLine("| weights | bytes/token | prefill tok/s | decode tok/s | % of adjacent roofline | roofline tok/s (best probe) | % of best roofline | decode runs: tok/s @ GB/s probed |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|---:|---|");
        foreach (var (format, bytes, prefill, decode) in results)
        {
            var median = Median(decode.Select(run => run.TokensPerSecond));
            var adjacent = Median(decode.Select(run => run.TokensPerSecond * bytes / run.Bandwidth.BytesPerSecond));
            var roofline = best.BytesPerSecond / bytes;
            var all = string.Join(" ", decode.Select(run => string.Create(CultureInfo.InvariantCulture, $"{run.TokensPerSecond:F1}@{run.Bandwidth.GigabytesPerSecond:F0}")));
            Console.WriteLine($"| {format} | {bytes / 1e6:F0} MB | {prefill:F1} | {median:F2} | {100 * adjacent:F0}% | {roofline:F2} | {100 * median / roofline:F0}% | {all} |");
        }

        return 0;
    }

    /// <summary>One timed decode run and the better of the bandwidth probes taken right before and right after it.</summary>
    private readonly record struct DecodeRun(double TokensPerSecond, MemoryBandwidth Bandwidth);

    /// <summary>
    /// Prefill tok/s of the prompt and <paramref name="runs"/> decode runs of <paramref name="decodeTokens"/> greedy
    /// tokens after a warm-up run, each continuing the same prompt (the cache is cut back to it), so the runs see the
    /// same context.
    /// </summary>
    /// <param name="beforeTimedRuns">Called after the warm-up, before the timed runs.</param>
    private static (double Prefill, DecodeRun[] Decode) Measure(
        CausalLanguageModel model, MemoryBandwidthProbe probe, int promptTokens, int decodeTokens, int runs, double warmUpSeconds = WarmUpSeconds, Action? beforeTimedRuns = null)
    {
        var prompt = new int[promptTokens];
        for (var i = 0; i < prompt.Length; i++)
        {
            prompt[i] = (i * 7919) % Vocabulary;
        }

        var logits = new float[Vocabulary];
        using var cache = model.CreateCache(promptTokens + decodeTokens + 1);

        // One short warm-up pass so JIT tiering does not count against either phase.
        model.Forward(prompt.AsSpan(0, 4), cache, logits);
        cache.Reset();

        var clock = Stopwatch.StartNew();
        model.Forward(prompt, cache, logits);
        var prefill = promptTokens / clock.Elapsed.TotalSeconds;
        var first = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);

        var next = new int[1];
        double DecodeTokensPerSecond()
        {
            cache.Truncate(promptTokens);
            next[0] = first;
            clock.Restart();
            for (var i = 0; i < decodeTokens; i++)
            {
                model.Forward(next, cache, logits);
                next[0] = System.Numerics.Tensors.TensorPrimitives.IndexOfMax(logits);
            }

            return decodeTokens / clock.Elapsed.TotalSeconds;
        }

        // Untimed warm-up runs first, for at least WarmUpSeconds: the decode path's methods are recompiled (tier 1, and
        // on-stack replacement of their loops) only after dozens of calls and a quiet period, on a background thread
        // that competes with the kernels for the cores; one 32-token run left the first timed runs 20-40% slow.
        var warmUp = Stopwatch.StartNew();
        do
        {
            DecodeTokensPerSecond();
        }
        while (warmUp.Elapsed.TotalSeconds < warmUpSeconds);
        beforeTimedRuns?.Invoke();

        var decode = new DecodeRun[runs];
        var before = probe.Measure(passes: 2);
        for (var run = 0; run < runs; run++)
        {
            var tokensPerSecond = DecodeTokensPerSecond();
            var after = probe.Measure(passes: 2);
            decode[run] = new DecodeRun(tokensPerSecond, MemoryBandwidth.Better(before, after));
            before = after;
        }

        return (prefill, decode);
    }

    internal static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        var middle = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
    }

    private static void WriteModel(string directory, int layers, string format)
    {
        var bits = format switch
        {
            "bf16" => 0,
            "q4" => 4,
            "q8" => 8,
            _ => throw new ArgumentException($"unknown format '{format}' (bf16, q4, q8)."),
        };
        const int groupSize = 64;
        Console.Error.WriteLine($"Writing a generated {format} model to {directory}...");
        Directory.CreateDirectory(directory);
        var config = new JsonObject
        {
            ["model_type"] = "qwen3",
            ["vocab_size"] = Vocabulary,
            ["hidden_size"] = Hidden,
            ["intermediate_size"] = Intermediate,
            ["num_hidden_layers"] = layers,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KeyValueHeads,
            ["head_dim"] = HeadDim,
            ["max_position_embeddings"] = 40960,
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = 1000000.0,
            ["tie_word_embeddings"] = true,
            ["torch_dtype"] = "bfloat16",
        };
        if (bits > 0)
        {
            config["quantization"] = new JsonObject { ["group_size"] = groupSize, ["bits"] = bits };
        }

        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        var random = new Random(1234);
        var writer = new SafetensorsWriter();
        void Linear(string name, int outFeatures, int inFeatures)
        {
            if (bits == 0)
            {
                writer.Add(name + ".weight", DType.BF16, [outFeatures, inFeatures], RandomBFloat16(random, (long)outFeatures * inFeatures, 0.02f));
                return;
            }

            var codes = new uint[(long)outFeatures * inFeatures * bits / 32];
            random.NextBytes(MemoryMarshal.AsBytes(codes.AsSpan()));
            var groups = (long)outFeatures * (inFeatures / groupSize);
            writer.Add(name + ".weight", codes, outFeatures, inFeatures * bits / 32);
            writer.Add(name + ".scales", DType.BF16, [outFeatures, inFeatures / groupSize], RandomBFloat16(random, groups, 0.002f));
            writer.Add(name + ".biases", DType.BF16, [outFeatures, inFeatures / groupSize], RandomBFloat16(random, groups, 0.01f));
        }

        void Norm(string name, int size) =>
            writer.Add(name, DType.BF16, [size], MemoryMarshal.AsBytes(Enumerable.Repeat((ushort)0x3F80, size).ToArray().AsSpan()));

        Linear("model.embed_tokens", Vocabulary, Hidden);
        Norm("model.norm.weight", Hidden);
        for (var layer = 0; layer < layers; layer++)
        {
            var prefix = $"model.layers.{layer}.";
            Norm(prefix + "input_layernorm.weight", Hidden);
            Norm(prefix + "post_attention_layernorm.weight", Hidden);
            Norm(prefix + "self_attn.q_norm.weight", HeadDim);
            Norm(prefix + "self_attn.k_norm.weight", HeadDim);
            Linear(prefix + "self_attn.q_proj", Heads * HeadDim, Hidden);
            Linear(prefix + "self_attn.k_proj", KeyValueHeads * HeadDim, Hidden);
            Linear(prefix + "self_attn.v_proj", KeyValueHeads * HeadDim, Hidden);
            Linear(prefix + "self_attn.o_proj", Hidden, Heads * HeadDim);
            Linear(prefix + "mlp.gate_proj", Intermediate, Hidden);
            Linear(prefix + "mlp.up_proj", Intermediate, Hidden);
            Linear(prefix + "mlp.down_proj", Hidden, Intermediate);
        }

        writer.Save(Path.Combine(directory, "model.safetensors"));
    }

    /// <summary>Uniform values in [-scale, scale] as bf16 bytes, built directly from random bits for speed.</summary>
    private static byte[] RandomBFloat16(Random random, long count, float scale)
    {
        var values = new ushort[count];
        var uniforms = new byte[count];
        random.NextBytes(uniforms);
        for (long i = 0; i < count; i++)
        {
            var value = ((uniforms[i] / 127.5f) - 1f) * scale;
            values[i] = (ushort)(BitConverter.SingleToUInt32Bits(value) >> 16);
        }

        return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    private static string? Option(string[] args, string name)
    {
        var index = Array.IndexOf(args, name);
        return index >= 0 && index + 1 < args.Length ? args[index + 1] : null;
    }

    private static int IntOption(string[] args, string name, int fallback) =>
        Option(args, name) is { } text ? int.Parse(text, CultureInfo.InvariantCulture) : fallback;
}
