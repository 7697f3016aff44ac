using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using Granary.Abstractions;

namespace Granary.Gateway.Metrics;

/// <summary>
/// What the gateway counts for /metrics: requests by route and status, tokens in and out, time to first token and
/// inter-token latency per model, requests in flight and those still waiting for their first token.
/// </summary>
internal sealed class GatewayMetrics
{
    private readonly ConcurrentDictionary<(string Route, int Status), Counter> _requests = new();
    private readonly ConcurrentDictionary<string, ModelCounters> _models = new(StringComparer.Ordinal);
    private long _inFlight;
    private long _waiting;

    public long InFlight => Interlocked.Read(ref _inFlight);

    public long Waiting => Interlocked.Read(ref _waiting);

    public void RequestFinished(string route, int status) => _requests.GetOrAdd((route, status), _ => new Counter()).Add(1);

    public ModelCounters Model(string model) => _models.GetOrAdd(model, _ => new ModelCounters());

    /// <summary>Counts a generation in flight and waiting for its first token until <see cref="GenerationTracker.FirstToken"/>.</summary>
    public GenerationTracker BeginGeneration(string model)
    {
        Interlocked.Increment(ref _inFlight);
        Interlocked.Increment(ref _waiting);
        return new GenerationTracker(this, Model(model));
    }

    internal void FirstTokenReceived() => Interlocked.Decrement(ref _waiting);

    internal void GenerationEnded() => Interlocked.Decrement(ref _inFlight);

    /// <summary>The gateway's own series, then the cluster's (when its status could be read), in Prometheus text format 0.0.4.</summary>
    public string Render(ClusterStatus? status, string? statusProblem)
    {
        var text = new StringBuilder();
        Header(text, "granary_gateway_requests_total", "counter", "HTTP requests answered, by route and status code (499: the client went away).");
        foreach (var ((route, code), counter) in _requests.OrderBy(entry => entry.Key.Route, StringComparer.Ordinal).ThenBy(entry => entry.Key.Status))
        {
            Sample(text, "granary_gateway_requests_total", $"route=\"{Escape(route)}\",status=\"{code}\"", counter.Value);
        }

        Header(text, "granary_gateway_requests_in_flight", "gauge", "Generation requests being served now.");
        Sample(text, "granary_gateway_requests_in_flight", null, InFlight);
        Header(text, "granary_gateway_queue_depth", "gauge", "Generation requests accepted but still waiting for their first token.");
        Sample(text, "granary_gateway_queue_depth", null, Waiting);

        var models = _models.OrderBy(entry => entry.Key, StringComparer.Ordinal).ToList();
        Header(text, "granary_gateway_prompt_tokens_total", "counter", "Prompt tokens of the generations started, by model.");
        foreach (var (model, counters) in models)
        {
            Sample(text, "granary_gateway_prompt_tokens_total", $"model=\"{Escape(model)}\"", counters.PromptTokens.Value);
        }

        Header(text, "granary_gateway_completion_tokens_total", "counter", "Tokens generated, by model.");
        foreach (var (model, counters) in models)
        {
            Sample(text, "granary_gateway_completion_tokens_total", $"model=\"{Escape(model)}\"", counters.CompletionTokens.Value);
        }

        WriteHistograms(text, "granary_gateway_time_to_first_token_seconds", "Seconds from a request's arrival to its first generated token.", models, counters => counters.TimeToFirstToken);
        WriteHistograms(text, "granary_gateway_inter_token_latency_seconds", "Seconds between consecutive generated tokens of one request.", models, counters => counters.InterTokenLatency);
        WriteCluster(text, status, statusProblem);
        return text.ToString();
    }

    private static void WriteCluster(StringBuilder text, ClusterStatus? status, string? problem)
    {
        Header(text, "granary_cluster_status_up", "gauge", "1 when the gateway could read the cluster's status for this scrape.");
        Sample(text, "granary_cluster_status_up", null, status is null ? 0 : 1);
        if (status is null)
        {
            text.Append("# cluster status unavailable: ").Append(problem?.ReplaceLineEndings(" ")).Append('\n');
            return;
        }

        Header(text, "granary_silo_up", "gauge", "1 for a silo that is Active in membership and answered; labels give its address and membership status.");
        foreach (var silo in status.Silos)
        {
            var up = silo.Status == "Active" && silo.Host is not null ? 1 : 0;
            Sample(text, "granary_silo_up", $"silo=\"{Escape(silo.SiloName)}\",address=\"{Escape(silo.Address)}\",status=\"{Escape(silo.Status)}\"", up);
        }

        var reporting = status.Silos.Where(silo => silo.Host is not null).ToList();
        SiloGauge(text, reporting, "granary_silo_memory_total_bytes", "gauge", "Memory the silo's backend has for models.", host => host.Memory.TotalBytes);
        SiloGauge(text, reporting, "granary_silo_memory_available_bytes", "gauge", "Memory the silo can still offer to models.", host => host.Memory.AvailableBytes);
        SiloGauge(text, reporting, "granary_silo_model_bytes", "gauge", "Bytes of model weights the silo holds.", host => host.Memory.ModelBytes);
        SiloGauge(text, reporting, "granary_silo_shards", "gauge", "Model shards loaded on the silo.", host => host.Shards.Length);
        SiloGauge(text, reporting, "granary_silo_generations_running", "gauge", "Generations the silo is running or holding for its shard now.", host => host.Work.Length);
        SiloGauge(text, reporting, "granary_silo_model_loads_total", "counter", "Times the silo read model weights from disk since it started.", host => host.ModelLoads);
        SiloGauge(text, reporting, "granary_silo_batch_size", "gauge", "Sequences in the silo's decode batches at their last step.", host => SumBatches(host, batch => batch.LastBatchSize));
        SiloGauge(text, reporting, "granary_silo_batch_steps_total", "counter", "Batched forward passes the silo's engines ran since the shards loaded.", host => SumBatches(host, batch => batch.Steps));
        SiloGauge(text, reporting, "granary_silo_batch_queue", "gauge", "Requests on the silo waiting for a batch slot.", host => SumBatches(host, batch => batch.QueuedRequests));
        SiloGauge(text, reporting, "granary_silo_prompt_cache_hits_total", "counter", "Requests whose prompt reused a cached prefix, since the shards loaded.", host => SumBatches(host, batch => batch.PromptCacheHits));
        SiloGauge(text, reporting, "granary_silo_prompt_cache_misses_total", "counter", "Requests whose prompt found no cached prefix, since the shards loaded.", host => SumBatches(host, batch => batch.PromptCacheMisses));
        SiloGauge(text, reporting, "granary_silo_prompt_cache_hit_tokens_total", "counter", "Prompt tokens taken from the prompt cache instead of prefilled.", host => SumBatches(host, batch => batch.PromptCacheHitTokens));

        Header(text, "granary_model_plan_version", "gauge", "The plan version of each loaded model (it grows with every re-plan).");
        foreach (var plan in status.Models)
        {
            Sample(text, "granary_model_plan_version", $"model=\"{Escape(plan.Model)}\"", plan.Version);
        }
    }

    private static long SumBatches(HostReport host, Func<BatchState, long> value) =>
        host.Shards.Sum(shard => shard.Batching is { } batch ? value(batch) : 0);

    private static void SiloGauge(StringBuilder text, List<SiloStatusReport> silos, string name, string type, string help, Func<HostReport, long> value)
    {
        Header(text, name, type, help);
        foreach (var silo in silos)
        {
            Sample(text, name, $"silo=\"{Escape(silo.SiloName)}\"", value(silo.Host!));
        }
    }

    private static void WriteHistograms(StringBuilder text, string name, string help, List<KeyValuePair<string, ModelCounters>> models, Func<ModelCounters, Histogram> histogram)
    {
        Header(text, name, "histogram", help);
        foreach (var (model, counters) in models)
        {
            var series = histogram(counters);
            var (cumulative, sum) = series.Snapshot();
            var label = $"model=\"{Escape(model)}\"";
            for (var i = 0; i < series.UpperBounds.Count; i++)
            {
                Sample(text, name + "_bucket", $"{label},le=\"{Number(series.UpperBounds[i])}\"", cumulative[i]);
            }

            Sample(text, name + "_bucket", $"{label},le=\"+Inf\"", cumulative[^1]);
            text.Append(name).Append("_sum{").Append(label).Append("} ").Append(Number(sum)).Append('\n');
            Sample(text, name + "_count", label, cumulative[^1]);
        }
    }

    private static void Header(StringBuilder text, string name, string type, string help) =>
        text.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n')
            .Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');

    private static void Sample(StringBuilder text, string name, string? labels, long value)
    {
        text.Append(name);
        if (labels is not null)
        {
            text.Append('{').Append(labels).Append('}');
        }

        text.Append(' ').Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');
    }

    private static string Number(double value) => value.ToString("R", CultureInfo.InvariantCulture);

    /// <summary>Label values escape backslash, double quote and newline.</summary>
    private static string Escape(string value) => value.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");
}

internal sealed class Counter
{
    private long _value;

    public long Value => Interlocked.Read(ref _value);

    public void Add(long amount) => Interlocked.Add(ref _value, amount);
}

internal sealed class ModelCounters
{
    public Counter PromptTokens { get; } = new();

    public Counter CompletionTokens { get; } = new();

    public Histogram TimeToFirstToken { get; } = new(Histogram.LatencyBounds);

    public Histogram InterTokenLatency { get; } = new(Histogram.LatencyBounds);
}

/// <summary>One generation's share of the gauges and latency histograms; dispose it when the request ends.</summary>
internal sealed class GenerationTracker(GatewayMetrics metrics, ModelCounters counters) : IDisposable
{
    private readonly long _start = System.Diagnostics.Stopwatch.GetTimestamp();
    private long _lastToken;
    private bool _waiting = true;
    private bool _disposed;

    public void PromptTokens(int count) => counters.PromptTokens.Add(count);

    /// <summary>Records a generated token: time to first token for the first, inter-token latency after.</summary>
    public void Token()
    {
        var now = System.Diagnostics.Stopwatch.GetTimestamp();
        counters.CompletionTokens.Add(1);
        if (_lastToken == 0)
        {
            counters.TimeToFirstToken.Observe(System.Diagnostics.Stopwatch.GetElapsedTime(_start, now).TotalSeconds);
            StopWaiting();
        }
        else
        {
            counters.InterTokenLatency.Observe(System.Diagnostics.Stopwatch.GetElapsedTime(_lastToken, now).TotalSeconds);
        }

        _lastToken = now;
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        StopWaiting();
        metrics.GenerationEnded();
    }

    private void StopWaiting()
    {
        if (_waiting)
        {
            _waiting = false;
            metrics.FirstTokenReceived();
        }
    }
}
