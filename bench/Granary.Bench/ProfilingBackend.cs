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
    private readonly Dictionary<string, List<long>> _ticks = new(StringComparer.Ordinal);

    public bool Recording { get; set; }

    public string Name => inner.Name;

    public DType ActivationDType => inner.ActivationDType;

    public long AvailableMemoryBytes => inner.AvailableMemoryBytes;

    public Tensor Allocate(DType dtype, params int[] shape) => inner.Allocate(dtype, shape);

    public Tensor Upload(ReadOnlySpan<byte> data, DType dtype, params int[] shape) => inner.Upload(data, dtype, shape);

    public Tensor Map(HostRegion region, DType dtype, params int[] shape) => inner.Map(region, dtype, shape);

    public void Download(Tensor source, Span<byte> destination) => inner.Download(source, destination);

    public void Synchronize() => inner.Synchronize();

    public void Copy(Tensor source, Tensor destination) => Time("copy", destination.Shape, () => inner.Copy(source, destination));

    public void Embedding(LinearWeight table, Tensor ids, Tensor output) => Time("embedding", output.Shape, () => inner.Embedding(table, ids, output));

    public void Linear(Tensor input, LinearWeight weight, Tensor output) =>
        Time($"linear {Describe(weight)}", input.Shape, () => inner.Linear(input, weight, output));

    public void Linears(Tensor input, ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        var (weightArray, outputArray) = (weights.ToArray(), outputs.ToArray());
        Time($"linears {string.Join(" + ", weightArray.Select(Describe))}", input.Shape, () => inner.Linears(input, weightArray, outputArray));
    }

    public void RmsNorm(Tensor input, Tensor weight, float epsilon, Tensor output) => Time("rms norm", input.Shape, () => inner.RmsNorm(input, weight, epsilon, output));

    public void Rope(Tensor x, Tensor positions, Tensor inverseFrequency, float attentionScaling) =>
        Time("rope", x.Shape, () => inner.Rope(x, positions, inverseFrequency, attentionScaling));

    public void Softmax(Tensor x) => Time("softmax", x.Shape, () => inner.Softmax(x));

    public void SiluMul(Tensor gate, Tensor up, Tensor output) => Time("silu mul", gate.Shape, () => inner.SiluMul(gate, up, output));

    public void Add(Tensor a, Tensor b, Tensor output) => Time("add", a.Shape, () => inner.Add(a, b, output));

    public void Mul(Tensor a, Tensor b, Tensor output) => Time("mul", a.Shape, () => inner.Mul(a, b, output));

    public void Attention(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, float scale, Tensor output) =>
        Time("attention", query.Shape, () => inner.Attention(query, keyCache, valueCache, startPosition, scale, output));

    public void TopKRouting(Tensor routerLogits, int k, bool normalizeTopK, Tensor indices, Tensor weights) =>
        Time("top-k routing", routerLogits.Shape, () => inner.TopKRouting(routerLogits, k, normalizeTopK, indices, weights));

    public void MixtureOfExperts(Tensor input, Tensor indices, Tensor weights, IReadOnlyList<ExpertWeights?> experts, Tensor output) =>
        Time("mixture of experts", input.Shape, () => inner.MixtureOfExperts(input, indices, weights, experts, output));

    public void Reset() => _ticks.Clear();

    /// <summary>
    /// Per operation and shape: calls per step, median and mean microseconds, and the share of <paramref name="stepSeconds"/>
    /// at the median, largest first; then what the medians leave out: slower calls (means over medians), and the time
    /// between calls (the model's own work).
    /// </summary>
    public void Print(int steps, double stepSeconds)
    {
        Console.WriteLine($"| operation [input shape] | calls/step | median us | mean us | ms/step at median | % of step ({stepSeconds * 1e3:F2} ms) |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        var (atMedians, atMeans) = (0.0, 0.0);
        foreach (var (key, ticks) in _ticks.Select(p => (p.Key, p.Value)).OrderByDescending(p => p.Value.Count * Median(p.Value)))
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

    private static double Median(List<long> ticks)
    {
        var sorted = ticks.Order().ToArray();
        return sorted[sorted.Length / 2];
    }

    private static string Describe(LinearWeight weight) =>
        $"{weight.OutFeatures}x{weight.InFeatures} {(weight switch { QuantizedWeight q => $"q{q.Bits}", DenseWeight d => d.Weight.DType.ToString().ToLowerInvariant(), _ => "" })}";

    private void Time(string operation, IReadOnlyList<int> shape, Action call)
    {
        if (!Recording)
        {
            call();
            return;
        }

        var start = Stopwatch.GetTimestamp();
        call();
        var elapsed = Stopwatch.GetTimestamp() - start;
        var key = $"{operation} [{string.Join(",", shape)}]";
        if (!_ticks.TryGetValue(key, out var list))
        {
            _ticks[key] = list = [];
        }

        list.Add(elapsed);
    }
}
