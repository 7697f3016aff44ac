using System.Runtime.CompilerServices;
using System.Text;
using Granary.Abstractions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Granary.Client;

/// <summary>
/// Loads models on a Granary cluster, generates with them and reads the cluster's status. Models are named by
/// reference: "builtin", a folder under the silos' model directory, or an absolute path present on the silos.
/// </summary>
public sealed class GranaryClient : IAsyncDisposable
{
    public const string BuiltInModel = "builtin";

    // A lost stream is resumed a few times at most; each try waits a moment for membership to settle.
    private const int MaxResumes = 3;
    private static readonly TimeSpan ResumeDelay = TimeSpan.FromMilliseconds(500);

    private readonly IClusterClient _cluster;
    private readonly IHost? _ownedHost;

    public GranaryClient(IClusterClient cluster)
        : this(cluster, null)
    {
    }

    private GranaryClient(IClusterClient cluster, IHost? ownedHost)
    {
        _cluster = cluster;
        _ownedHost = ownedHost;
    }

    /// <summary>Connects outside a host; dispose the client to disconnect.</summary>
    public static async Task<GranaryClient> ConnectAsync(Action<GranaryClientOptions>? configure = null, CancellationToken cancellationToken = default)
    {
        var options = new GranaryClientOptions();
        configure?.Invoke(options);
        var host = new HostBuilder()
            .ConfigureLogging(logging => logging.SetMinimumLevel(LogLevel.Warning))
            .ConfigureServices(services => services.AddGranaryClient(configure))
            .Build();
        try
        {
            await host.StartAsync(cancellationToken).WaitAsync(options.ConnectTimeout, cancellationToken);
        }
        catch (Exception e) when (e is TimeoutException or OrleansException or Orleans.Runtime.Messaging.ConnectionFailedException)
        {
            host.Dispose();
            var where = options.Membership == GranaryClientOptions.Postgres ? "the gateways in the PostgreSQL membership table" : string.Join(", ", options.Gateways);
            throw new GranaryConnectionException($"Could not connect to Granary cluster '{options.ClusterId}' at {where}: {e.Message}", e);
        }
        catch
        {
            host.Dispose();
            throw;
        }

        return new GranaryClient(host.Services.GetRequiredService<IClusterClient>(), host);
    }

    /// <summary>Plans the model over the live silos and loads its shards; returns the plan.</summary>
    public Task<ModelPlan> LoadModelAsync(string model = BuiltInModel, CancellationToken cancellationToken = default) =>
        Coordinator(model).LoadAsync(cancellationToken);

    public Task UnloadModelAsync(string model = BuiltInModel) => Coordinator(model).UnloadAsync();

    /// <summary>
    /// Streams a generation token by token; loads the model first if it is not loaded. Cancel to stop it.
    /// If the coordinator's stream is lost (its silo died, or its activation moved when the grain directory was
    /// repartitioned), the job is resumed from the tokens already received, so the caller sees one answer.
    /// </summary>
    public async IAsyncEnumerable<TokenChunk> StreamAsync(
        string model,
        GenerationJob job,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(job);
        job.Prompt.Validate();
        if (job.JobId.Length == 0)
        {
            job = job with { JobId = Guid.NewGuid().ToString("N")[..12] };
        }

        var received = new List<int>(job.ProducedTokenIds);
        for (var resumes = 0; ; resumes++)
        {
            var stream = Coordinator(model).GenerateAsync(job, cancellationToken).GetAsyncEnumerator(cancellationToken);
            Exception? lost = null;
            try
            {
                while (true)
                {
                    TokenChunk chunk;
                    try
                    {
                        if (!await stream.MoveNextAsync())
                        {
                            yield break;
                        }

                        chunk = stream.Current;
                    }
                    catch (Exception e) when (IsLostStream(e, cancellationToken) && resumes < MaxResumes)
                    {
                        lost = e;
                        break;
                    }

                    if (chunk.HasToken)
                    {
                        received.Add(chunk.TokenId);
                    }

                    yield return chunk.Summary is null ? chunk : chunk with { Summary = chunk.Summary with { Failovers = chunk.Summary.Failovers + resumes } };
                }
            }
            finally
            {
                await DisposeQuietlyAsync(stream);
            }

            job = job with { ProducedTokenIds = [.. received] };
            await Task.Delay(ResumeDelay, cancellationToken);
        }
    }

    /// <summary>Runs a generation to the end and returns its tokens, text and summary.</summary>
    public async Task<GenerationResult> GenerateAsync(string model, GenerationJob job, CancellationToken cancellationToken = default)
    {
        var tokens = new List<int>();
        var text = new StringBuilder();
        GenerationSummary? summary = null;
        await foreach (var chunk in StreamAsync(model, job, cancellationToken))
        {
            if (chunk.HasToken)
            {
                tokens.Add(chunk.TokenId);
            }

            text.Append(chunk.Text);
            summary = chunk.Summary ?? summary;
        }

        return new GenerationResult([.. tokens], text.ToString(), summary
            ?? throw new InvalidOperationException("The generation stream ended without its summary."));
    }

    /// <summary>The assistant's next turn in a conversation.</summary>
    public Task<GenerationResult> ChatAsync(
        string model,
        IEnumerable<ChatTurn> messages,
        int maxTokens = 256,
        SamplingSettings? sampling = null,
        CancellationToken cancellationToken = default) =>
        GenerateAsync(model, new GenerationJob
        {
            Prompt = Prompt.FromChat(messages),
            MaxTokens = maxTokens,
            Sampling = sampling ?? new SamplingSettings(),
        }, cancellationToken);

    /// <summary>
    /// Fine-tunes <paramref name="model"/> with LoRA, data parallel over the live silos, and streams the reports. A silo
    /// that dies makes the survivors resume from the last checkpoint in <see cref="TrainingJob.AdapterPath"/>.
    /// </summary>
    public async IAsyncEnumerable<TrainingProgress> TrainAsync(
        string model,
        TrainingJob job,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(job);
        job.Validate();
        var restarts = job.PriorRestarts;
        for (var resumes = 0; ; resumes++)
        {
            var stream = Coordinator(model).TrainAsync(job, cancellationToken).GetAsyncEnumerator(cancellationToken);
            try
            {
                while (true)
                {
                    try
                    {
                        if (!await stream.MoveNextAsync())
                        {
                            yield break;
                        }
                    }
                    catch (Exception e) when (IsLostStream(e, cancellationToken) && resumes < MaxResumes)
                    {
                        break;
                    }

                    restarts = stream.Current.Restarts;
                    yield return stream.Current;
                }
            }
            finally
            {
                await DisposeQuietlyAsync(stream);
            }

            // The coordinator was lost: a new one goes on from the last checkpoint.
            job = job with { Resume = true, PriorRestarts = restarts + 1 };
            await Task.Delay(ResumeDelay, cancellationToken);
        }
    }

    /// <summary>Silos with their memory, backend, shards and running work, and the loaded models' plans.</summary>
    public Task<ClusterStatus> StatusAsync(CancellationToken cancellationToken = default) =>
        _cluster.GetGrain<IClusterStatusGrain>(0).GetStatusAsync().WaitAsync(cancellationToken);

    public async ValueTask DisposeAsync()
    {
        if (_ownedHost is not null)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            try
            {
                await _ownedHost.StopAsync(timeout.Token);
            }
            finally
            {
                _ownedHost.Dispose();
            }
        }
    }

    private ICoordinatorGrain Coordinator(string model)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        return _cluster.GetGrain<ICoordinatorGrain>(model);
    }

    private static bool IsLostStream(Exception error, CancellationToken cancellationToken) =>
        !cancellationToken.IsCancellationRequested
        && error is EnumerationAbortedException or SiloUnavailableException or OrleansMessageRejectionException;

    private static async ValueTask DisposeQuietlyAsync<T>(IAsyncEnumerator<T> stream)
    {
        try
        {
            await stream.DisposeAsync();
        }
        catch (Exception e) when (e is EnumerationAbortedException or SiloUnavailableException or OrleansMessageRejectionException)
        {
            // The stream's coordinator is gone; there is nothing left to release.
        }
    }
}

/// <summary>A finished generation.</summary>
public sealed record GenerationResult(int[] Tokens, string Text, GenerationSummary Summary);

/// <summary>The cluster could not be reached.</summary>
public sealed class GranaryConnectionException(string message, Exception inner) : Exception(message, inner);
