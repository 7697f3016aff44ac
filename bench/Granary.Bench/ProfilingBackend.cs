using System.Diagnostics;
using System.Globalization;
using Granary.Tensors;

namespace Granary.Bench;

/// <summary>
/// Times every operation of a synchronous backend (the CPU backend: each call returns when its work is done) by kind and
/// shape, for `decode --profile`: where a decode step's time goes, as medians, which the shared machine's slow outliers
/// do not move. Not for asynchronous backends, whose calls return before the work is done.
/// </summary>
internal sealed class ProfilingBackend(IComputeBackend inner) : IComputeBackend
{
    // Keyed by value, not by a formatted name: the key is made after every timed call, and its cost would otherwise show
    // up as the model's own work between calls. The name is formatted once, when a key is first seen.
    private readonly Dictionary<CallKey, (string Name, List<long> Ticks)> _calls = [];

    public bool Recording { get; set; }

    public string Name => inner.Name;

    public DType ActivationDType => inner.ActivationDType;

    public long AvailableMemoryBytes => inner.AvailableMemoryBytes;

    public Tensor Allocate(DType dtype, params int[] shape) => inner.Allocate(dtype, shape);

    public Tensor Upload(ReadOnlySpan<byte> data, DType dtype, params int[] shape) => inner.Upload(data, dtype, shape);

    public Tensor Map(HostRegion region, DType dtype, params int[] shape) => inner.Map(region, dtype, shape);

    public void Download(Tensor source, Span<byte> destination) => inner.Download(source, destination);

    public void Synchronize() => inner.Synchronize();

    public void Copy(Tensor source, Tensor destination)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Copy(source, destination);
        Record(start, "copy", destination.Shape);
    }

    public void Embedding(LinearWeight table, Tensor ids, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Embedding(table, ids, output);
        Record(start, "embedding", output.Shape);
    }

    public void Linear(Tensor input, LinearWeight weight, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Linear(input, weight, output);
        Record(start, "linear", input.Shape, [weight]);
    }

    public void Linears(Tensor input, ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Linears(input, weights, outputs);
        Record(start, "linears", input.Shape, weights);
    }

    public void RmsNorm(Tensor input, Tensor weight, float epsilon, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.RmsNorm(input, weight, epsilon, output);
        Record(start, "rms norm", input.Shape);
    }

    public void Rope(Tensor x, Tensor positions, Tensor inverseFrequency, float attentionScaling)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Rope(x, positions, inverseFrequency, attentionScaling);
        Record(start, "rope", x.Shape);
    }

    public void Softmax(Tensor x)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Softmax(x);
        Record(start, "softmax", x.Shape);
    }

    public void SiluMul(Tensor gate, Tensor up, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.SiluMul(gate, up, output);
        Record(start, "silu mul", gate.Shape);
    }

    public void Add(Tensor a, Tensor b, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Add(a, b, output);
        Record(start, "add", a.Shape);
    }

    public void Mul(Tensor a, Tensor b, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Mul(a, b, output);
        Record(start, "mul", a.Shape);
    }

    public void Attention(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, float scale, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.Attention(query, keyCache, valueCache, startPosition, scale, output);
        Record(start, "attention", query.Shape);
    }

    public void TopKRouting(Tensor routerLogits, int k, bool normalizeTopK, Tensor indices, Tensor weights)
    {
        var start = Stopwatch.GetTimestamp();
        inner.TopKRouting(routerLogits, k, normalizeTopK, indices, weights);
        Record(start, "top-k routing", routerLogits.Shape);
    }

    public void MixtureOfExperts(Tensor input, Tensor indices, Tensor weights, IReadOnlyList<ExpertWeights?> experts, Tensor output)
    {
        var start = Stopwatch.GetTimestamp();
        inner.MixtureOfExperts(input, indices, weights, experts, output);
        Record(start, "mixture of experts", input.Shape);
    }

    public void Reset() => _calls.Clear();

    /// <summary>
    /// Per operation and shape: calls per step, median and mean microseconds, and the share of <paramref name="stepSeconds"/>
    /// (the mean step of the recorded runs)
    /// at the median, largest first; then what the medians leave out: slower calls (means over medians), and the time
    /// between calls (the model's own work).
    /// </summary>
    public void Print(int steps, double stepSeconds)
    {
        Console.WriteLine($"| operation [input shape] | calls/step | median us | mean us | ms/step at median | % of step ({stepSeconds * 1e3:F2} ms) |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        var (atMedians, atMeans) = (0.0, 0.0);
        foreach (var (key, ticks) in _calls.Values.OrderByDescending(call => call.Ticks.Count * Median(call.Ticks)))
        {
            var median = Median(ticks) / Stopwatch.Frequency;
            var mean = ticks.Average() / Stopwatch.Frequency;
            var perStep = (double)ticks.Count / steps;
            atMedians += median * perStep;
            atMeans += mean * perStep;
            Console.WriteLine(string.Create(
                CultureInfo.InvariantCulture, $"| {key} | {perStep:F0} | {median * 1e6:F1} | {mean * 1e6:F1} | {median * perStep * 1e3:F3} | {100 * median * perStep / stepSeconds:F1}% |"));
        }

        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| slower calls (means over medians) | | | | {(atMeans - atMedians) * 1e3:F3} | {100 * (atMeans - atMedians) / stepSeconds:F1}% |"));
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| between calls | | | | {(stepSeconds - atMeans) * 1e3:F3} | {100 * (stepSeconds - atMeans) / stepSeconds:F1}% |"));
    }

    public void Dispose() => inner.Dispose();

    private static double Median(List<long> ticks) => DecodeBenchmark.Median(ticks.Select(t => (double)t));

    private static string Describe(LinearWeight weight) =>
        $"{weight.OutFeatures}x{weight.InFeatures} {(weight switch { QuantizedWeight q => $"q{q.Bits}", DenseWeight d => d.Weight.DType.ToString().ToLowerInvariant(), _ => "" })}";

    /// <summary>
    /// Adds the call begun at <paramref name="start"/> to its operation, input shape and weight shapes and formats (of
    /// the first and last weight: every layer's q|k|v, say, is one row of the table).
    /// </summary>
    private void Record(long start, string operation, int[] shape, ReadOnlySpan<LinearWeight> weights = default)
    {
        var elapsed = Stopwatch.GetTimestamp() - start;
        if (!Recording)
        {
            return;
        }

        int Dim(int i) => i < shape.Length ? shape[i] : 0;
        var key = new CallKey(
            operation, shape.Length, Dim(0), Dim(1), Dim(2), Dim(3), weights.Length, WeightKey(weights.IsEmpty ? null : weights[0]), WeightKey(weights.IsEmpty ? null : weights[^1]));
        if (!_calls.TryGetValue(key, out var call))
        {
            var names = new string[weights.Length];
            for (var i = 0; i < names.Length; i++)
            {
                names[i] = Describe(weights[i]);
            }

            var described = names.Length == 0 ? operation : $"{operation} {string.Join(" + ", names)}";
            _calls[key] = call = ($"{described} [{string.Join(",", shape)}]", []);
        }

        call.Ticks.Add(elapsed);
    }

    private static (int Out, int In, int Format) WeightKey(LinearWeight? weight) => weight switch
    {
        null => default,
        QuantizedWeight q => (q.OutFeatures, q.InFeatures, -q.Bits),
        DenseWeight d => (d.OutFeatures, d.InFeatures, (int)d.Weight.DType),
        _ => (weight.OutFeatures, weight.InFeatures, int.MinValue),
    };

    private readonly record struct CallKey(
        string Operation, int Rank, int Dim0, int Dim1, int Dim2, int Dim3, int Weights, (int Out, int In, int Format) First, (int Out, int In, int Format) Last);
}
