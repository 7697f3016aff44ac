using Granary.Abstractions;
using Granary.Client;
using Granary.Gateway.Metrics;
using Granary.Gateway.Protocol;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Orleans.Runtime;

namespace Granary.Gateway;

/// <summary>
/// Runs the generations of the gateway's requests on the cluster through the client SDK. Each request streams on
/// its own; nothing here serializes requests, so concurrent requests reach the cluster concurrently.
/// </summary>
internal sealed partial class GenerationRunner(
    GranaryClient client,
    IClusterClient cluster,
    GatewayMetrics metrics,
    IOptions<GatewayOptions> options,
    ILogger<GenerationRunner> logger)
{
    private readonly GatewayOptions _options = options.Value;

    /// <summary>
    /// Encodes the prompt, checks its length, starts the generation and waits for its first chunk, so that what the
    /// engine refuses before producing a token (a prompt beyond the model's context, stop strings on a model without
    /// a tokenizer) is an HTTP error rather than a broken stream.
    /// </summary>
    public async Task<RunningGeneration> StartAsync(GenerationSpec spec, CancellationToken cancellationToken)
    {
        var tracker = metrics.BeginGeneration(spec.ServedModel);
        IAsyncEnumerator<TokenChunk>? stream = null;
        try
        {
            var promptIds = await EncodeAsync(spec, cancellationToken);
            if (promptIds.Length == 0)
            {
                throw ApiException.BadRequest("The prompt is empty: it encodes to no tokens.", spec.PromptParam, "invalid_value");
            }

            if (promptIds.Length > _options.MaxPromptTokens)
            {
                throw ApiException.PromptTooLong(promptIds.Length, _options.MaxPromptTokens, spec.PromptParam);
            }

            var job = new GenerationJob
            {
                Prompt = Prompt.FromTokenIds(promptIds),
                MaxTokens = spec.MaxTokens,
                Sampling = spec.Sampling,
                StopStrings = spec.StopStrings,
                StopAtEndOfSequence = spec.StopAtEndOfSequence,
            };
            stream = client.StreamAsync(spec.ModelReference, job, cancellationToken).GetAsyncEnumerator(cancellationToken);
            var hasFirst = await stream.MoveNextAsync();
            tracker.PromptTokens(promptIds.Length);
            return new RunningGeneration(stream, hasFirst, promptIds.Length, tracker);
        }
        catch (Exception e)
        {
            if (stream is not null)
            {
                await stream.DisposeAsync();
            }

            tracker.Dispose();
            if (e is ApiException || cancellationToken.IsCancellationRequested)
            {
                throw;
            }

            throw ToApiException(e, spec);
        }
    }

    /// <summary>The API error for a failure of the cluster or the engine.</summary>
    public ApiException ToApiException(Exception error, GenerationSpec spec)
    {
        switch (error)
        {
            case ApiException api:
                return api;
            case ArgumentException when error.Message.Contains("context holds", StringComparison.Ordinal):
                return ApiException.BadRequest(error.Message, spec.PromptParam, "context_length_exceeded");
            case ArgumentException:
                return ApiException.BadRequest(error.Message, null, "invalid_value");
            case InsufficientClusterCapacityException or InvalidDataException:
                // InvalidDataException: the silos could not read the model's files or merge its adapters into it.
                return new ApiException(StatusCodes.Status503ServiceUnavailable, $"The model '{spec.ServedModel}' cannot be loaded on the cluster: {error.Message}",
                    ApiException.Unavailable, "model", "model_unavailable");
            case GranaryConnectionException or SiloUnavailableException or OrleansMessageRejectionException or TimeoutException
                or Orleans.Runtime.Messaging.ConnectionFailedException:
                return new ApiException(StatusCodes.Status503ServiceUnavailable, $"The Granary cluster is unavailable: {error.Message}", ApiException.Unavailable, null, "cluster_unavailable");
            default:
                LogGenerationFailed(logger, spec.ServedModel, error);
                return new ApiException(StatusCodes.Status500InternalServerError, $"The generation failed: {error.Message}", ApiException.ServerError);
        }
    }

    private async Task<int[]> EncodeAsync(GenerationSpec spec, CancellationToken cancellationToken)
    {
        if (spec.Prompt.TokenIds is { } ids)
        {
            return ids;
        }

        // The leader shard holds the model's tokenizer and chat format; the SDK has no encode call of its own.
        var plan = await client.LoadModelAsync(spec.ModelReference, cancellationToken);
        try
        {
            return await cluster.GetGrain<IShardGrain>(plan.Leader.Shard.ToGrainKey()).EncodePromptAsync(spec.Prompt).WaitAsync(cancellationToken);
        }
        catch (InvalidOperationException e)
        {
            // The model cannot read this kind of prompt (no tokenizer or no chat format).
            throw ApiException.BadRequest(e.Message, spec.PromptParam, "invalid_value");
        }
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "Generation on {Model} failed")]
    private static partial void LogGenerationFailed(ILogger logger, string model, Exception exception);
}

/// <summary>A started generation whose first chunk has arrived; records its tokens in the metrics as they come.</summary>
internal sealed class RunningGeneration(IAsyncEnumerator<TokenChunk> stream, bool hasFirst, int promptTokens, GenerationTracker tracker) : IAsyncDisposable
{
    private bool _pending = hasFirst;

    public int PromptTokens { get; } = promptTokens;

    public GenerationSummary? Summary { get; private set; }

    /// <summary>The chunks in order, the first one included; the summary is kept in <see cref="Summary"/>.</summary>
    public async IAsyncEnumerable<TokenChunk> ReadAllAsync()
    {
        while (_pending || await stream.MoveNextAsync())
        {
            _pending = false;
            var chunk = stream.Current;
            if (chunk.HasToken)
            {
                tracker.Token();
            }

            Summary = chunk.Summary ?? Summary;
            yield return chunk;
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await stream.DisposeAsync();
        }
        finally
        {
            tracker.Dispose();
        }
    }
}
