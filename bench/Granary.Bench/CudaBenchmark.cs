using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.Transformer;
using Granary.Tensors;
using Granary.Tensors.Cuda;

namespace Granary.Bench;

/// <summary>
/// Decode and prefill speed of the CUDA backend on Qwen3-0.6B- and Qwen3-8B-shaped bf16 decoders, beside the decode
/// roofline: weight bytes per step over the device-to-device copy bandwidth measured in the same run.
/// "model" columns run Granary.Models' <see cref="CausalLanguageModel"/> itself, loaded from a checkpoint of the shape
/// (written sparse, then its weights filled with random values on the GPU): its plain path (one backend call per
/// operation) and its default path (at batch 1 the fused decode step, recorded once as a CUDA graph). "step" columns
/// are hand-built steps over the same shape for comparison: the plain layer sequence replayed as a graph at one fixed
/// position, and the fused step. Every decode step reads the logits back as generation does. Batch 8 is 8 sequences
/// decoded together (Linear over 8 rows, attention per sequence).
/// </summary>
internal static class CudaBenchmark
{
    private static readonly Shape[] Shapes =
    [
        new("qwen3-0.6b", Hidden: 1024, Layers: 28, Heads: 16, KvHeads: 8, HeadDim: 128, Inner: 3072, Vocabulary: 151936, Tied: true),
        new("qwen3-8b", Hidden: 4096, Layers: 36, Heads: 32, KvHeads: 8, HeadDim: 128, Inner: 12288, Vocabulary: 151936, Tied: false),
    ];

    public static int Run(string[] arguments)
    {
        var options = Options.Parse(arguments);
        using var backend = new CudaBackend();
        Console.WriteLine($"CUDA backend on {backend.DeviceName}; prompt {options.Prompt} tokens, {options.Steps} decode steps");
        var bandwidth = MeasureCopyBandwidth(backend);
        Console.WriteLine($"Device copy bandwidth (cuMemcpyDtoD, read + write): {bandwidth / 1e12:F2} TB/s");
        var rows = new List<string>();
        foreach (var shape in Shapes.Where(s => options.Models.Contains(s.Name)))
        {
            var steps = new Dictionary<int, (double Graph, double Fused, double LinearBandwidth)>();
            long bytes;
            using (var synthetic = new SyntheticModel(backend, shape))
            {
                bytes = synthetic.WeightBytesPerStep;
                foreach (var batch in options.Batches)
                {
                    var (_, graph, linearBandwidth) = synthetic.MeasureDecode(batch, options.Prompt, options.Steps);
                    steps[batch] = (graph, batch == 1 ? FusedOrNaN(synthetic, options) : double.NaN, linearBandwidth);
                }
            }

            using var real = RealModel.Load(backend, shape);
            if (real.Model.WeightBytes != bytes)
            {
                Console.Error.WriteLine($"{shape.Name}: the model reads {real.Model.WeightBytes} weight bytes a step, the hand-built step {bytes}; the roofline uses the latter.");
            }

            var prefill = real.MeasurePrefill(options.Prompt);
            foreach (var batch in options.Batches)
            {
                var roofline = bandwidth / bytes * batch;
                var plain = batch == 1 ? real.MeasureDecode(batch, options.Prompt, options.Steps, fused: false) : double.NaN;
                var current = real.MeasureDecode(batch, options.Prompt, options.Steps, fused: batch == 1);
                var (graph, fused, linearBandwidth) = steps[batch];
                rows.Add(string.Create(
                    CultureInfo.InvariantCulture,
                    $"{shape.Name,-11} {batch,5} {bytes / 1e9,10:F2} {roofline,10:F0} {Rate(plain, roofline)} {Rate(current, roofline)} {Rate(graph, roofline)} {Rate(fused, roofline)} {linearBandwidth / 1e12,9:F2} {prefill,12:F0}"));
                Console.WriteLine(rows[^1]);
            }

            if (real.Model.FusedDecodeRecordingFailure is { } failure)
            {
                Console.WriteLine($"{shape.Name}: the fused decode step could not be recorded and ran eagerly: {failure}");
            }
        }

        Console.WriteLine();
        Console.WriteLine($"{"",-11} {"",5} {"",10} {"",10} {"model (real CausalLanguageModel)",-33} {"step (hand-built)",-33}");
        Console.WriteLine($"{"model",-11} {"batch",5} {"weight GB",10} {"roofline",10} {"plain",9} {"%roof",6} {"current",9} {"%roof",6} {"graph",9} {"%roof",6} {"fused",9} {"%roof",6} {"gemv TB/s",9} {"prefill t/s",12}");
        rows.ForEach(Console.WriteLine);
        Console.WriteLine("(decode columns in tokens/s summed over the batch; roofline = copy bandwidth / weight bytes per step x batch;");
        Console.WriteLine(" model plain: CausalLanguageModel with FusedDecode off, one backend call per operation; model current: its default");
        Console.WriteLine(" path (batch 1: the fused decode step recorded as a CUDA graph; batch 8: the plain path); step graph: the plain");
        Console.WriteLine(" layer sequence hand-built and replayed as a graph at one fixed position; step fused: the fused step hand-built;");
        Console.WriteLine(" gemv TB/s = weight bytes of the step's Linear calls alone, replayed as a graph, over their time;");
        Console.WriteLine(" prefill: the model's Forward over the prompt)");
        return 0;
    }

    /// <summary>
    /// One rank of tensor-parallel decode (start one process per GPU with `granary launch --backend nccl` or the
    /// GRANARY_* variables): each rank holds 1/n of the heads, MLP features and vocabulary, the o_proj and down_proj
    /// outputs are summed by NCCL in device memory and the logits gathered on the device, as Granary.Models' sharded
    /// decoder does. Rank 0 prints one line: decode tokens/s eagerly and as a graph replay, the time per step of the
    /// step's collectives alone (replayed as a graph), and the per-rank roofline.
    /// </summary>
    public static int RunTensorParallel(string[] arguments)
    {
        var options = Options.Parse(arguments);
        using var world = Group.Init(strict: false, backend: CollectiveOptions.FromEnvironment() is null ? null : "nccl");
        using var backend = new CudaBackend();
        var group = world.Size > 1 ? world : null;
        var print = world.Rank == 0;
        var bandwidth = MeasureCopyBandwidth(backend);
        if (print)
        {
            Console.WriteLine($"Rank 0 of {world.Size} ({world.Backend}) on GPU {backend.Device}: {backend.DeviceName}; copy bandwidth {bandwidth / 1e12:F2} TB/s; prompt {options.Prompt}, {options.Steps} steps");
        }

        foreach (var shape in Shapes.Where(s => options.Models.Contains(s.Name)))
        {
            using var model = new SyntheticModel(backend, shape, group);
            var bytes = model.WeightBytesPerStep;
            foreach (var batch in options.Batches)
            {
                var (eager, graph, _) = model.MeasureDecode(batch, options.Prompt, options.Steps);
                var fused = batch == 1 ? FusedOrNaN(model, options) : double.NaN;
                var collectives = model.MeasureCollectives(batch, options.Steps);
                if (print)
                {
                    Console.WriteLine(string.Create(
                        CultureInfo.InvariantCulture,
                        $"tp-result model={shape.Name} ranks={world.Size} batch={batch} weight_gb_per_rank={bytes / 1e9:F2} roofline={bandwidth / bytes * batch:F0} eager={eager:F1} graph={graph:F1} fused={fused:F1} collectives_ms={collectives * 1e3:F3}"));
                }
            }
        }

        world.Barrier();
        return 0;
    }

    private static string Rate(double tokensPerSecond, double roofline) =>
        double.IsNaN(tokensPerSecond)
            ? $"{"-",9} {"-",6}"
            : string.Create(CultureInfo.InvariantCulture, $"{tokensPerSecond,9:F1} {tokensPerSecond / roofline,6:P0}");

    /// <summary>The fused step's tokens/s, or NaN with the reason on stderr where its kernels cannot run (so the table still prints).</summary>
    private static double FusedOrNaN(SyntheticModel model, Options options)
    {
        try
        {
            return model.MeasureFusedDecode(options.Prompt, options.Steps);
        }
        catch (CudaException e)
        {
            Console.Error.WriteLine($"fused decode step failed: {e.Message}");
            return double.NaN;
        }
    }

    private static double MeasureCopyBandwidth(CudaBackend backend)
    {
        const int Bytes = 1 << 30, Repeats = 10;
        using var source = backend.Allocate(DType.U8, Bytes);
        using var destination = backend.Allocate(DType.U8, Bytes);
        backend.Copy(source, destination);
        backend.Synchronize();
        var best = double.MaxValue;
        for (var round = 0; round < 3; round++)
        {
            var clock = Stopwatch.StartNew();
            for (var i = 0; i < Repeats; i++)
            {
                backend.Copy(source, destination);
            }

            backend.Synchronize();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }

        return 2.0 * Bytes * Repeats / best;
    }

    private sealed record Shape(string Name, int Hidden, int Layers, int Heads, int KvHeads, int HeadDim, int Inner, int Vocabulary, bool Tied);

    private sealed record Options(string[] Models, int[] Batches, int Prompt, int Steps)
    {
        public static Options Parse(string[] arguments)
        {
            var options = new Options(["qwen3-0.6b", "qwen3-8b"], [1, 8], 512, 64);
            for (var i = 0; i + 1 < arguments.Length; i += 2)
            {
                var value = arguments[i + 1];
                options = arguments[i] switch
                {
                    "--models" => options with { Models = value.Split(',') },
                    "--batches" => options with { Batches = value.Split(',').Select(int.Parse).ToArray() },
                    "--prompt" => options with { Prompt = int.Parse(value, CultureInfo.InvariantCulture) },
                    "--steps" => options with { Steps = int.Parse(value, CultureInfo.InvariantCulture) },
                    _ => throw new ArgumentException($"Unknown option {arguments[i]}; expected --models, --batches, --prompt, --steps."),
                };
            }

            return options;
        }
    }

    /// <summary>
    /// One decoder layer. q, k and v are row runs of one stacked weight and gate and up of another, so the fused step
    /// (<see cref="QueryKeyValue"/>, <see cref="GateUp"/>) and the one-op-per-call step read the same bytes.
    /// </summary>
    private sealed record Layer(
        Tensor InputNorm, DenseWeight QueryKeyValue, LinearWeight Query, LinearWeight Key, LinearWeight Value, LinearWeight Output, Tensor QueryNorm,
        Tensor KeyNorm, Tensor PostNorm, DenseWeight GateUp, LinearWeight Gate, LinearWeight Up, LinearWeight Down);

    /// <summary>
    /// A Qwen3-shaped decoder with random bf16 weights made on the device; with a tensor group, this rank's share of it
    /// (heads, key/value heads, MLP features and vocabulary divided by the group size, partial sums added by the group).
    /// </summary>
    private sealed class SyntheticModel : IDisposable
    {
        private const float Epsilon = 1e-6f;

        private readonly CudaBackend _backend;
        private readonly Shape _shape;
        private readonly Group? _group;
        private readonly List<IDisposable> _owned = [];
        private readonly Layer[] _layers;
        private readonly LinearWeight _embedding;
        private readonly LinearWeight _head;
        private readonly Tensor _finalNorm;
        private readonly Tensor _inverseFrequency;
        private ulong _seed = 1;

        public SyntheticModel(CudaBackend backend, Shape shape, Group? group = null)
        {
            var parts = group?.Size ?? 1;
            if (shape.Heads % parts != 0 || shape.KvHeads % parts != 0 || shape.Inner % parts != 0 || shape.Vocabulary % parts != 0)
            {
                throw new ArgumentException($"{shape.Name} cannot be split evenly over {parts} ranks.");
            }

            shape = shape with { Heads = shape.Heads / parts, KvHeads = shape.KvHeads / parts, Inner = shape.Inner / parts, Vocabulary = shape.Vocabulary / parts };
            _backend = backend;
            _shape = shape;
            _group = group;
            _embedding = Dense(shape.Vocabulary, shape.Hidden);
            _head = shape.Tied ? _embedding : Dense(shape.Vocabulary, shape.Hidden);
            _finalNorm = Norm(shape.Hidden);
            var (queryRows, keyValueRows) = (shape.Heads * shape.HeadDim, shape.KvHeads * shape.HeadDim);
            _layers = Enumerable.Range(0, shape.Layers).Select(_ =>
            {
                var inputNorm = Norm(shape.Hidden);
                var queryKeyValue = Dense(queryRows + (2 * keyValueRows), shape.Hidden);
                var output = Dense(shape.Hidden, queryRows);
                var (queryNorm, keyNorm, postNorm) = (Norm(shape.HeadDim), Norm(shape.HeadDim), Norm(shape.Hidden));
                var gateUp = Dense(2 * shape.Inner, shape.Hidden);
                return new Layer(
                    inputNorm, queryKeyValue, Rows(queryKeyValue, 0, queryRows), Rows(queryKeyValue, queryRows, keyValueRows),
                    Rows(queryKeyValue, queryRows + keyValueRows, keyValueRows), output, queryNorm, keyNorm, postNorm,
                    gateUp, Rows(gateUp, 0, shape.Inner), Rows(gateUp, shape.Inner, shape.Inner), Dense(shape.Hidden, shape.Inner));
            }).ToArray();
            var frequencies = Enumerable.Range(0, shape.HeadDim / 2).Select(j => (float)Math.Pow(1e6, -2.0 * j / shape.HeadDim)).ToArray();
            _inverseFrequency = Keep(backend.Upload(MemoryMarshal.AsBytes(frequencies.AsSpan()), DType.F32, frequencies.Length));
            backend.Synchronize();
        }

        /// <summary>As CausalLanguageModel.WeightBytes: one embedding row, every layer, the final norm, the whole head.</summary>
        public long WeightBytesPerStep =>
            (_embedding.WeightBytes / _shape.Vocabulary) + _finalNorm.ByteLength + _head.WeightBytes
            + _layers.Sum(l => l.InputNorm.ByteLength + l.Query.WeightBytes + l.Key.WeightBytes + l.Value.WeightBytes + l.Output.WeightBytes
                + l.QueryNorm.ByteLength + l.KeyNorm.ByteLength + l.PostNorm.ByteLength + l.Gate.WeightBytes + l.Up.WeightBytes + l.Down.WeightBytes);

        /// <summary>
        /// Decode tokens per second summed over <paramref name="batch"/> sequences, eager and as a graph replay, and the
        /// bandwidth of the step's Linear calls alone.
        /// </summary>
        public (double Eager, double Graph, double LinearBandwidth) MeasureDecode(int batch, int prompt, int steps)
        {
            using var state = new DecodeState(_backend, _shape, batch, batch, prompt + steps + 1, _group?.Size ?? 1);
            var logits = new float[state.AllLogits.ElementCount];
            for (var warmup = 0; warmup < 3; warmup++)
            {
                DecodeStep(state, prompt + warmup);
            }

            _backend.Download(state.AllLogits, MemoryMarshal.AsBytes(logits.AsSpan()));
            var clock = Stopwatch.StartNew();
            for (var step = 0; step < steps; step++)
            {
                DecodeStep(state, prompt + step);
                _backend.Download(state.AllLogits, MemoryMarshal.AsBytes(logits.AsSpan()));
            }

            var eager = batch * steps / clock.Elapsed.TotalSeconds;
            using var graph = _backend.Capture(() => DecodeStep(state, prompt));
            graph.Launch();
            _backend.Synchronize();
            clock.Restart();
            for (var step = 0; step < steps; step++)
            {
                graph.Launch();
                _backend.Download(state.AllLogits, MemoryMarshal.AsBytes(logits.AsSpan()));
            }

            var replayed = batch * steps / clock.Elapsed.TotalSeconds;
            if (logits.Any(float.IsNaN))
            {
                throw new InvalidOperationException("Decode produced NaN logits.");
            }

            using var linears = _backend.Capture(() => Linears(state));
            linears.Launch();
            _backend.Synchronize();
            clock.Restart();
            for (var step = 0; step < steps; step++)
            {
                linears.Launch();
            }

            _backend.Synchronize();
            var linearBytes = _head.WeightBytes + _layers.Sum(l =>
                l.Query.WeightBytes + l.Key.WeightBytes + l.Value.WeightBytes + l.Output.WeightBytes + l.Gate.WeightBytes + l.Up.WeightBytes + l.Down.WeightBytes);
            return (eager, replayed, linearBytes * steps / clock.Elapsed.TotalSeconds);
        }

        /// <summary>
        /// Decode tokens per second at batch 1 of the fused step (<see cref="DecodeStepFused"/>) as one graph captured once
        /// and replayed at every position (the position lives in device memory and the step advances it).
        /// </summary>
        public double MeasureFusedDecode(int prompt, int steps)
        {
            var capacity = prompt + (2 * steps) + 8;
            using var state = new DecodeState(_backend, _shape, 1, 1, capacity, _group?.Size ?? 1);
            using var position = _backend.Upload(MemoryMarshal.AsBytes(new[] { prompt }.AsSpan()), DType.I32, 1);
            var logits = new float[state.AllLogits.ElementCount];
            for (var warmup = 0; warmup < 3; warmup++)
            {
                DecodeStepFused(state, position, capacity);
            }

            _backend.Download(state.AllLogits, MemoryMarshal.AsBytes(logits.AsSpan()));
            using var graph = _backend.Capture(() => DecodeStepFused(state, position, capacity));
            graph.Launch();
            _backend.Synchronize();
            var clock = Stopwatch.StartNew();
            for (var step = 0; step < steps; step++)
            {
                graph.Launch();
                _backend.Download(state.AllLogits, MemoryMarshal.AsBytes(logits.AsSpan()));
            }

            var replayed = steps / clock.Elapsed.TotalSeconds;
            if (logits.Any(float.IsNaN))
            {
                throw new InvalidOperationException("The fused decode step produced NaN logits.");
            }

            return replayed;
        }

        /// <summary>Seconds per step of the step's collectives alone (two all-sums a layer, the logits gather), replayed as a graph.</summary>
        public double MeasureCollectives(int batch, int steps)
        {
            if (_group is null)
            {
                return 0;
            }

            using var state = new DecodeState(_backend, _shape, batch, batch, 2, _group.Size);
            void Collectives()
            {
                for (var layer = 0; layer < 2 * _layers.Length; layer++)
                {
                    _group.AllSum(state.Projected);
                }

                _group.AllGather(state.Logits, state.AllLogits);
            }

            Collectives();
            _backend.Synchronize();
            using var graph = _backend.Capture(Collectives);
            graph.Launch();
            _backend.Synchronize();
            var clock = Stopwatch.StartNew();
            for (var step = 0; step < steps; step++)
            {
                graph.Launch();
            }

            _backend.Synchronize();
            return clock.Elapsed.TotalSeconds / steps;
        }

        public void Dispose()
        {
            _owned.Reverse();
            _owned.ForEach(d => d.Dispose());
        }

        private void Linears(DecodeState state)
        {
            var b = _backend;
            foreach (var layer in _layers)
            {
                b.Linear(state.Normed, layer.Query, state.Query);
                b.Linear(state.Normed, layer.Key, state.Key);
                b.Linear(state.Normed, layer.Value, state.Value);
                b.Linear(state.Attention, layer.Output, state.Projected);
                b.Linear(state.Normed, layer.Gate, state.Gate);
                b.Linear(state.Normed, layer.Up, state.Up);
                b.Linear(state.Gate, layer.Down, state.Projected);
            }

            b.Linear(state.Normed, _head, state.Logits);
        }

        private void DecodeStep(DecodeState state, int position)
        {
            var b = _backend;
            var s = _shape;
            b.Embedding(_embedding, state.Ids, state.Hidden);
            foreach (var (layer, index) in _layers.Select((l, i) => (l, i)))
            {
                Attention(state, layer, index, state.Positions(position, state.Batch), (query, output) =>
                {
                    for (var sequence = 0; sequence < state.Batch; sequence++)
                    {
                        b.Attention(query.Slice(sequence, 1), state.Keys[sequence][index], state.Values[sequence][index], position, 1f / MathF.Sqrt(s.HeadDim), output.Slice(sequence, 1));
                    }
                }, position);
                FeedForward(state, layer);
            }

            b.RmsNorm(state.Hidden, _finalNorm, Epsilon, state.Normed);
            b.Linear(state.Normed, _head, state.Logits);
            _group?.AllGather(state.Logits, state.AllLogits);
        }

        /// <summary>
        /// The decode step of one sequence with the CUDA backend's fusions: residual add + RMSNorm, q|k|v as one GEMV,
        /// q/k norm + RoPE + cache append, attention at the device-side position, gate|up GEMV with SiLU-mul; 9 kernels a
        /// layer instead of 20. Ends by advancing the position, so a captured step replays at the next one.
        /// </summary>
        private void DecodeStepFused(DecodeState state, Tensor position, int capacity)
        {
            var b = _backend;
            var s = _shape;
            var query = state.QueryNormed.Reshape(1, s.Heads, s.HeadDim);
            var attention = state.Attention.Reshape(1, s.Heads, s.HeadDim);
            b.Embedding(_embedding, state.Ids, state.Hidden);
            for (var index = 0; index < _layers.Length; index++)
            {
                var layer = _layers[index];
                b.AddRmsNorm(state.Hidden, index == 0 ? null : state.Projected, layer.InputNorm, Epsilon, state.Normed);
                b.Linear(state.Normed, layer.QueryKeyValue, state.QueryKeyValue);
                b.QkNormRopeAppend(
                    state.QueryKeyValue, layer.QueryNorm, layer.KeyNorm, Epsilon, position, _inverseFrequency, 1f, query, state.Keys[0][index], state.Values[0][index]);
                b.Attention(query, state.Keys[0][index], state.Values[0][index], position, capacity, 1f / MathF.Sqrt(s.HeadDim), attention);
                b.Linear(state.Attention, layer.Output, state.Projected);
                _group?.AllSum(state.Projected);
                b.AddRmsNorm(state.Hidden, state.Projected, layer.PostNorm, Epsilon, state.Normed);
                b.SwiGluLinear(state.Normed, layer.GateUp, state.Gate);
                b.Linear(state.Gate, layer.Down, state.Projected);
                _group?.AllSum(state.Projected);
            }

            b.AddRmsNorm(state.Hidden, state.Projected, _finalNorm, Epsilon, state.Normed);
            b.Linear(state.Normed, _head, state.Logits);
            _group?.AllGather(state.Logits, state.AllLogits);
            b.AdvancePositions(position, 1);
        }

        private void Attention(DecodeState state, Layer layer, int index, Tensor positions, Action<Tensor, Tensor> attend, int startPosition)
        {
            var b = _backend;
            var s = _shape;
            var n = state.Hidden.Dim(0);
            b.RmsNorm(state.Hidden, layer.InputNorm, Epsilon, state.Normed);
            b.Linear(state.Normed, layer.Query, state.Query);
            b.Linear(state.Normed, layer.Key, state.Key);
            b.Linear(state.Normed, layer.Value, state.Value);
            var query = state.Query.Reshape(n, s.Heads, s.HeadDim);
            var key = state.Key.Reshape(n, s.KvHeads, s.HeadDim);
            var normedQuery = state.QueryNormed.Reshape(n, s.Heads, s.HeadDim);
            var normedKey = state.KeyNormed.Reshape(n, s.KvHeads, s.HeadDim);
            b.RmsNorm(query, layer.QueryNorm, Epsilon, normedQuery);
            b.RmsNorm(key, layer.KeyNorm, Epsilon, normedKey);
            b.Rope(normedQuery, positions, _inverseFrequency, 1f);
            b.Rope(normedKey, positions, _inverseFrequency, 1f);
            var value = state.Value.Reshape(n, s.KvHeads, s.HeadDim);
            var rowsPerSequence = n / state.Batch;
            for (var sequence = 0; sequence < state.Batch; sequence++)
            {
                b.Copy(normedKey.Slice(sequence * rowsPerSequence, rowsPerSequence), state.Keys[sequence][index].Slice(startPosition, rowsPerSequence));
                b.Copy(value.Slice(sequence * rowsPerSequence, rowsPerSequence), state.Values[sequence][index].Slice(startPosition, rowsPerSequence));
            }

            attend(normedQuery, state.Attention.Reshape(n, s.Heads, s.HeadDim));
            b.Linear(state.Attention, layer.Output, state.Projected);
            _group?.AllSum(state.Projected);
            b.Add(state.Hidden, state.Projected, state.Hidden);
        }

        private void FeedForward(DecodeState state, Layer layer)
        {
            var b = _backend;
            b.RmsNorm(state.Hidden, layer.PostNorm, Epsilon, state.Normed);
            b.Linear(state.Normed, layer.Gate, state.Gate);
            b.Linear(state.Normed, layer.Up, state.Up);
            b.SiluMul(state.Gate, state.Up, state.Gate);
            b.Linear(state.Gate, layer.Down, state.Projected);
            _group?.AllSum(state.Projected);
            b.Add(state.Hidden, state.Projected, state.Hidden);
        }

        private static DenseWeight Rows(DenseWeight stacked, int start, int count) => new(stacked.Weight.Slice(start, count));

        private DenseWeight Dense(int outFeatures, int inFeatures)
        {
            var weight = _backend.Allocate(DType.BF16, outFeatures, inFeatures);
            var bound = 1f / MathF.Sqrt(inFeatures);
            _backend.FillUniform(weight, -bound, bound, _seed++);
            return Keep(new DenseWeight(weight));
        }

        private Tensor Norm(int length)
        {
            var weight = _backend.Allocate(DType.BF16, length);
            _backend.FillUniform(weight, 0.8f, 1.2f, _seed++);
            return Keep(weight);
        }

        private T Keep<T>(T item)
            where T : IDisposable
        {
            _owned.Add(item);
            return item;
        }
    }

    /// <summary>
    /// Granary.Models' own model of a shape: a Qwen3 checkpoint written sparse (a safetensors header, then holes that read
    /// as zeros, so nothing is generated on the host), loaded through <see cref="ModelLoader"/> like any checkpoint, then
    /// every weight filled with random values on the GPU (norms near 1, projections within 1/sqrt(in)).
    /// </summary>
    private sealed class RealModel : IDisposable
    {
        private readonly CudaBackend _backend;
        private readonly string _directory;
        private readonly LoadedModel _loaded;

        private RealModel(CudaBackend backend, string directory, LoadedModel loaded) => (_backend, _directory, _loaded) = (backend, directory, loaded);

        public CausalLanguageModel Model => _loaded.Model;

        public static RealModel Load(CudaBackend backend, Shape shape)
        {
            var directory = Path.Combine(Path.GetTempPath(), $"granary-bench-{shape.Name}-{Environment.ProcessId}");
            Directory.CreateDirectory(directory);
            try
            {
                WriteCheckpoint(directory, shape);
                var loaded = ModelLoader.Load(directory, backend);
                var model = new RealModel(backend, directory, loaded);
                model.FillWeights();
                return model;
            }
            catch
            {
                Directory.Delete(directory, recursive: true);
                throw;
            }
        }

        /// <summary>Tokens per second of one prompt of <paramref name="tokens"/> through Forward (after a warm-up prompt).</summary>
        public double MeasurePrefill(int tokens)
        {
            var ids = Ids(tokens, 0);
            var logits = new float[Model.Config.VocabularySize];
            using var cache = Model.CreateCache(tokens);
            Model.Forward(ids, cache, logits);
            cache.Reset();
            var clock = Stopwatch.StartNew();
            Model.Forward(ids, cache, logits);
            return tokens / clock.Elapsed.TotalSeconds;
        }

        /// <summary>
        /// Decode tokens per second summed over <paramref name="batch"/> sequences after a prompt each, through Forward
        /// (batch 1) or ForwardBatch, with <see cref="CausalLanguageModel.FusedDecode"/> set to <paramref name="fused"/>;
        /// three warm-up steps first (the fused step runs once eagerly, is recorded, then replayed).
        /// </summary>
        public double MeasureDecode(int batch, int prompt, int steps, bool fused)
        {
            const int Warmup = 3;
            var model = Model;
            model.FusedDecode = fused;
            var vocabulary = model.Config.VocabularySize;
            var caches = Enumerable.Range(0, batch).Select(_ => model.CreateCache(prompt + Warmup + steps)).ToArray();
            try
            {
                var logits = new float[batch * vocabulary];
                foreach (var (cache, i) in caches.Select((c, i) => (c, i)))
                {
                    model.Forward(Ids(prompt, i), cache, logits.AsSpan(0, vocabulary));
                }

                var tokens = new int[batch];
                var sequences = new BatchedSequence[batch];
                void Step(int step)
                {
                    for (var i = 0; i < batch; i++)
                    {
                        tokens[i] = ((step * 31) + (i * 7919) + 1) % vocabulary;
                        sequences[i] = new BatchedSequence(caches[i], tokens.AsMemory(i, 1));
                    }

                    if (batch == 1)
                    {
                        model.Forward(tokens.AsSpan(0, 1), caches[0], logits);
                    }
                    else
                    {
                        model.ForwardBatch(sequences, logits);
                    }
                }

                for (var step = 0; step < Warmup; step++)
                {
                    Step(step);
                }

                var clock = Stopwatch.StartNew();
                for (var step = 0; step < steps; step++)
                {
                    Step(Warmup + step);
                }

                var rate = batch * steps / clock.Elapsed.TotalSeconds;
                if (logits.Any(float.IsNaN))
                {
                    throw new InvalidOperationException("The model's decode produced NaN logits.");
                }

                return rate;
            }
            finally
            {
                foreach (var cache in caches)
                {
                    cache.Dispose();
                }
            }
        }

        public void Dispose()
        {
            _loaded.Dispose();
            Directory.Delete(_directory, recursive: true);
        }

        private int[] Ids(int count, int sequence) =>
            Enumerable.Range(0, count).Select(i => ((i * 7919) + (sequence * 104729) + 3) % Model.Config.VocabularySize).ToArray();

        private void FillWeights()
        {
            var model = Model;
            ulong seed = 1000;
            void Norm(Tensor? weight)
            {
                if (weight is not null)
                {
                    _backend.FillUniform(weight, 0.8f, 1.2f, seed++);
                }
            }

            void Projection(LinearWeight weight)
            {
                var bound = 1f / MathF.Sqrt(weight.InFeatures);
                _backend.FillUniform(((DenseWeight)weight).Weight, -bound, bound, seed++);
            }

            Projection(model.Embedding!);
            foreach (var layer in model.Layers)
            {
                var attention = layer.Attention;
                var feedForward = (DenseFeedForward)layer.FeedForward;
                Norm(layer.InputNorm);
                Norm(layer.PostAttentionNorm);
                Norm(attention.QueryNorm);
                Norm(attention.KeyNorm);
                foreach (var weight in new[] { attention.QueryProjection, attention.KeyProjection, attention.ValueProjection, attention.OutputProjection, feedForward.Gate, feedForward.Up, feedForward.Down })
                {
                    Projection(weight);
                }
            }

            Norm(model.FinalNorm);
            if (!ReferenceEquals(model.OutputHead, model.Embedding))
            {
                Projection(model.OutputHead!);
            }

            _backend.Synchronize();
        }

        /// <summary>config.json and a model.safetensors of bf16 tensors whose data is one hole of the right length.</summary>
        private static void WriteCheckpoint(string directory, Shape shape)
        {
            var (hidden, headDim, inner) = (shape.Hidden, shape.HeadDim, shape.Inner);
            var tensors = new List<(string Name, int[] Shape)> { ("model.embed_tokens.weight", [shape.Vocabulary, hidden]) };
            for (var i = 0; i < shape.Layers; i++)
            {
                var prefix = $"model.layers.{i}.";
                tensors.AddRange(
                [
                    (prefix + "input_layernorm.weight", [hidden]),
                    (prefix + "self_attn.q_proj.weight", [shape.Heads * headDim, hidden]),
                    (prefix + "self_attn.k_proj.weight", [shape.KvHeads * headDim, hidden]),
                    (prefix + "self_attn.v_proj.weight", [shape.KvHeads * headDim, hidden]),
                    (prefix + "self_attn.o_proj.weight", [hidden, shape.Heads * headDim]),
                    (prefix + "self_attn.q_norm.weight", [headDim]),
                    (prefix + "self_attn.k_norm.weight", [headDim]),
                    (prefix + "post_attention_layernorm.weight", [hidden]),
                    (prefix + "mlp.gate_proj.weight", [inner, hidden]),
                    (prefix + "mlp.up_proj.weight", [inner, hidden]),
                    (prefix + "mlp.down_proj.weight", [hidden, inner]),
                ]);
            }

            tensors.Add(("model.norm.weight", [hidden]));
            if (!shape.Tied)
            {
                tensors.Add(("lm_head.weight", [shape.Vocabulary, hidden]));
            }

            var header = new Dictionary<string, object>();
            long offset = 0;
            foreach (var (name, dims) in tensors)
            {
                var bytes = dims.Aggregate(2L, (product, d) => product * d);
                header[name] = new { dtype = "BF16", shape = dims, data_offsets = new[] { offset, offset + bytes } };
                offset += bytes;
            }

            var json = JsonSerializer.Serialize(header);
            json += new string(' ', (8 - (Encoding.UTF8.GetByteCount(json) % 8)) % 8);
            var headerBytes = Encoding.UTF8.GetBytes(json);
            using (var file = File.Create(Path.Combine(directory, "model.safetensors")))
            {
                file.Write(BitConverter.GetBytes((ulong)headerBytes.Length));
                file.Write(headerBytes);
                file.SetLength(8 + headerBytes.Length + offset);
            }

            var config = new Dictionary<string, object>
            {
                ["architectures"] = new[] { "Qwen3ForCausalLM" },
                ["model_type"] = "qwen3",
                ["hidden_size"] = hidden,
                ["intermediate_size"] = inner,
                ["num_hidden_layers"] = shape.Layers,
                ["num_attention_heads"] = shape.Heads,
                ["num_key_value_heads"] = shape.KvHeads,
                ["head_dim"] = headDim,
                ["vocab_size"] = shape.Vocabulary,
                ["rms_norm_eps"] = 1e-6,
                ["rope_theta"] = 1e6,
                ["max_position_embeddings"] = 40960,
                ["tie_word_embeddings"] = shape.Tied,
                ["attention_bias"] = false,
                ["hidden_act"] = "silu",
                ["torch_dtype"] = "bfloat16",
                ["bos_token_id"] = 151643,
                ["eos_token_id"] = 151645,
            };
            File.WriteAllText(Path.Combine(directory, "config.json"), JsonSerializer.Serialize(config));
        }
    }

    /// <summary>Activations and per-sequence KV caches for <see cref="Batch"/> sequences stepping together.</summary>
    private sealed class DecodeState : IDisposable
    {
        private readonly List<Tensor> _owned = [];
        private readonly Tensor _positionTable;

        public DecodeState(CudaBackend backend, Shape shape, int batch, int rows, int capacity, int parts)
        {
            Batch = batch;
            Tensor Make(DType dtype, params int[] dims)
            {
                var tensor = backend.Allocate(dtype, dims);
                _owned.Add(tensor);
                return tensor;
            }

            var ids = Enumerable.Range(0, rows).Select(i => (i * 7919) % shape.Vocabulary).ToArray();
            Ids = backend.Upload(MemoryMarshal.AsBytes(ids.AsSpan()), DType.I32, rows);
            _owned.Add(Ids);

            // Row p of the table holds position p for every sequence; prefill reads positions 0..n-1 of column 0.
            var table = new int[capacity * batch];
            for (var i = 0; i < table.Length; i++)
            {
                table[i] = i / batch;
            }

            _positionTable = backend.Upload(MemoryMarshal.AsBytes(table.AsSpan()), DType.I32, capacity, batch);
            _owned.Add(_positionTable);
            Hidden = Make(DType.F32, rows, shape.Hidden);
            Normed = Make(DType.F32, rows, shape.Hidden);
            Query = Make(DType.F32, rows, shape.Heads * shape.HeadDim);
            QueryKeyValue = Make(DType.F32, rows, (shape.Heads + (2 * shape.KvHeads)) * shape.HeadDim);
            QueryNormed = Make(DType.F32, rows, shape.Heads * shape.HeadDim);
            Key = Make(DType.F32, rows, shape.KvHeads * shape.HeadDim);
            KeyNormed = Make(DType.F32, rows, shape.KvHeads * shape.HeadDim);
            Value = Make(DType.F32, rows, shape.KvHeads * shape.HeadDim);
            Attention = Make(DType.F32, rows, shape.Heads * shape.HeadDim);
            Projected = Make(DType.F32, rows, shape.Hidden);
            Gate = Make(DType.F32, rows, shape.Inner);
            Up = Make(DType.F32, rows, shape.Inner);
            Logits = Make(DType.F32, batch, shape.Vocabulary);
            AllLogits = parts == 1 ? Logits : Make(DType.F32, parts * batch, shape.Vocabulary);
            Keys = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, shape.Layers).Select(_ => Make(DType.F32, capacity, shape.KvHeads, shape.HeadDim)).ToArray()).ToArray();
            Values = Enumerable.Range(0, batch).Select(_ => Enumerable.Range(0, shape.Layers).Select(_ => Make(DType.F32, capacity, shape.KvHeads, shape.HeadDim)).ToArray()).ToArray();
        }

        public int Batch { get; }

        public Tensor Ids { get; }

        public Tensor Hidden { get; }

        public Tensor Normed { get; }

        public Tensor Query { get; }

        /// <summary>The fused step's q|k|v projection.</summary>
        public Tensor QueryKeyValue { get; }

        public Tensor QueryNormed { get; }

        public Tensor Key { get; }

        public Tensor KeyNormed { get; }

        public Tensor Value { get; }

        public Tensor Attention { get; }

        public Tensor Projected { get; }

        public Tensor Gate { get; }

        public Tensor Up { get; }

        /// <summary>This rank's logits (its vocabulary run).</summary>
        public Tensor Logits { get; }

        /// <summary>Every rank's logits, gathered on the device (<see cref="Logits"/> itself on one rank).</summary>
        public Tensor AllLogits { get; }

        public Tensor[][] Keys { get; }

        public Tensor[][] Values { get; }

        /// <summary>Positions [count]: for decode, <paramref name="start"/> for every sequence; for a prompt, start..start+count-1.</summary>
        public Tensor Positions(int start, int count) =>
            Batch == 1 ? _positionTable.Slice(start, count).Reshape(count) : _positionTable.Slice(start, 1).Reshape(count);

        public void Dispose()
        {
            _owned.Reverse();
            _owned.ForEach(t => t.Dispose());
        }
    }
}
