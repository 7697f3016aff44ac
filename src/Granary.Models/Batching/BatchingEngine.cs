using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Granary.Models.Generation;
using Granary.Models.Tokenization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Granary.Models.Batching;

/// <summary>
/// Continuous batching over one model: concurrent requests share every decode step (one batched forward pass, so the
/// weights are read once per step for all of them), join the running batch at a token boundary and leave it when they
/// finish or their consumer goes away. Prompts are fed in chunks between decode steps, so a long prompt does not stall
/// the others, and they start from the cached keys and values of an earlier sequence that shares their prefix. Each
/// sequence samples with its own sampler and seed, so its tokens do not depend on what runs beside it.
/// A background thread runs the steps; <see cref="GenerateAsync"/> streams one request's tokens.
/// </summary>
public sealed partial class BatchingEngine : IAsyncDisposable
{
    private readonly CausalLanguageModel _model;
    private readonly IBatchRunner _runner;
    private readonly ITextTokenizer? _tokenizer;
    private readonly IReadOnlySet<int> _endOfSequenceIds;
    private readonly BatchingOptions _options;
    private readonly ILogger _logger;
    private readonly int _contextTokens;
    private readonly Lock _queueLock = new();
    private readonly Queue<Admission> _queue = new();
    private readonly ManualResetEventSlim _work = new(false);
    private readonly CancellationTokenSource _stopping = new();
    private readonly Task _loop;

    // Owned by the loop thread.
    private readonly List<Admission> _running = [];
    private readonly PromptCache _promptCache;
    private readonly BatchTokenSampler _sampleStep;
    private readonly Admission[] _stepMembers;
    private readonly BatchedSequence[] _stepBatch;
    private readonly int[] _stepTokens;

    private int _runningCount;
    private int _lastBatchSize;
    private long _promptTokens;
    private long _generatedTokens;
    private long _promptCacheHits;
    private long _promptCacheMisses;
    private long _promptCacheHitTokens;
    private long _steps;
    private int _disposed;
    private Exception? _loopFailure;

    /// <param name="model">
    /// A whole model on this process (a sharded one needs its other ranks to follow: see <see cref="CreateLockstepLeader"/>).
    /// </param>
    /// <param name="tokenizer">Needed for text output and stop strings; without it only ids are produced.</param>
    /// <param name="endOfSequenceIds">Ids that end generation.</param>
    public BatchingEngine(
        CausalLanguageModel model, ITextTokenizer? tokenizer, IReadOnlySet<int> endOfSequenceIds, BatchingOptions options, ILogger? logger = null)
        : this(model, tokenizer, endOfSequenceIds, options, logger, runner: null)
    {
    }

    private BatchingEngine(
        CausalLanguageModel model, ITextTokenizer? tokenizer, IReadOnlySet<int> endOfSequenceIds, BatchingOptions options, ILogger? logger, IBatchRunner? runner)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(endOfSequenceIds);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        if (runner is null && model.Shard is { PipelineStages: > 1 } or { TensorSize: > 1 })
        {
            throw new ArgumentException(
                "A sharded model must run the same batches on every rank in lockstep; serve it with CreateLockstepLeader on world rank 0 and LockstepFollower.Follow on the others.",
                nameof(model));
        }

        _model = model;
        _runner = runner ?? new LocalBatchRunner(model);
        _tokenizer = tokenizer;
        _endOfSequenceIds = endOfSequenceIds;
        _options = options;
        _logger = logger ?? NullLogger.Instance;
        _contextTokens = options.ContextTokens(model.Config);
        _promptCache = new PromptCache(_runner, options.PromptCacheEntries);
        _stepMembers = new Admission[options.MaxBatchSize];
        _stepBatch = new BatchedSequence[options.MaxBatchSize];
        _stepTokens = new int[options.MaxBatchSize];
        _sampleStep = (index, logits) => _stepMembers[index].Sequence.Sample(logits);
        _loop = Task.Factory.StartNew(RunLoop, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    /// <summary>Prompt plus max_tokens of one request at most.</summary>
    public int ContextTokens => _contextTokens;

    /// <summary>
    /// An engine over a loaded model, ending generation on the ids of its tokenizer, generation_config.json and
    /// config.json.
    /// </summary>
    public static BatchingEngine Create(LoadedModel loaded, BatchingOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        return new BatchingEngine(loaded.Model, loaded.Tokenizer, EndOfSequenceIds(loaded), options ?? new BatchingOptions(), logger);
    }

    /// <summary>
    /// An engine on world rank 0 of a model split over <paramref name="world"/> (tensor and/or pipeline parallel), whose
    /// other ranks run <see cref="LockstepFollower.Follow"/>: the whole batch of every step moves through all the
    /// shards together. While idle it messages the followers every <paramref name="pulseInterval"/>, which must be well
    /// under the group's timeout. Disposing the engine ends the followers. A failed group fails the running requests
    /// and every later one with <see cref="Granary.Collectives.CollectiveException"/>.
    /// </summary>
    public static BatchingEngine CreateLockstepLeader(
        LoadedModel loaded, Granary.Collectives.Group world, TimeSpan pulseInterval, BatchingOptions? options = null, ILogger? logger = null)
    {
        ArgumentNullException.ThrowIfNull(loaded);
        var runner = new LockstepBatchLeader(loaded.Model, world, pulseInterval);
        return new BatchingEngine(loaded.Model, loaded.Tokenizer, EndOfSequenceIds(loaded), options ?? new BatchingOptions(), logger, runner);
    }

    private static HashSet<int> EndOfSequenceIds(LoadedModel loaded)
    {
        var endOfSequence = new HashSet<int>(loaded.Generation.EosTokenIds);
        endOfSequence.UnionWith(loaded.Model.Config.EosTokenIds);
        if (loaded.Tokenizer is not null)
        {
            endOfSequence.UnionWith(loaded.Tokenizer.EndOfSequenceIds);
        }

        return endOfSequence;
    }

    /// <summary>
    /// Generates for <paramref name="request"/> in the shared batch, with the token, text and stop semantics of
    /// <see cref="TextGenerator.StreamAsync"/>. A bad request (including prompt + max_tokens beyond
    /// <see cref="ContextTokens"/>) throws <see cref="ArgumentException"/> here; a full queue throws
    /// <see cref="BatchingQueueFullException"/> when enumeration starts. Cancelling, or leaving the enumeration early,
    /// takes the sequence out of the batch at the next step and frees its slot.
    /// </summary>
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(
        GenerationRequest request, GenerationStatistics? statistics = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        GeneratingSequence.Validate(request, _model.Config.VocabularySize, _tokenizer);
        var needed = (long)request.PromptIds.Count + request.MaxTokens;
        if (needed > _contextTokens)
        {
            throw new ArgumentException(
                $"The prompt has {request.PromptIds.Count} tokens and max_tokens is {request.MaxTokens}: {needed} tokens, more than the context of {_contextTokens}.");
        }

        return Stream(request, statistics ?? new GenerationStatistics(), cancellationToken);
    }

    /// <summary>The engine's state now; safe to call from any thread.</summary>
    public BatchingSnapshot Snapshot()
    {
        int queued;
        lock (_queueLock)
        {
            queued = _queue.Count;
        }

        return new BatchingSnapshot(
            Volatile.Read(ref _runningCount),
            queued,
            Volatile.Read(ref _lastBatchSize),
            Interlocked.Read(ref _promptTokens),
            Interlocked.Read(ref _generatedTokens),
            Interlocked.Read(ref _promptCacheHits),
            Interlocked.Read(ref _promptCacheMisses),
            Interlocked.Read(ref _promptCacheHitTokens),
            Interlocked.Read(ref _steps));
    }

    /// <summary>Stops the loop after its current step; requests still running or waiting end with <see cref="ObjectDisposedException"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stopping.Cancel();
        _work.Set();
        await _loop.ConfigureAwait(false);

        var error = new ObjectDisposedException(nameof(BatchingEngine), "The batching engine was disposed.");
        foreach (var admission in _running)
        {
            admission.Output.Writer.TryComplete(error);
            if (admission.Cache is { } cache)
            {
                _runner.Release(cache);
            }
        }

        _running.Clear();
        lock (_queueLock)
        {
            foreach (var admission in _queue)
            {
                admission.Output.Writer.TryComplete(error);
            }

            _queue.Clear();
        }

        _promptCache.Dispose();
        _runner.Dispose();
        _stopping.Dispose();
        _work.Dispose();
    }

    private async IAsyncEnumerable<GeneratedToken> Stream(
        GenerationRequest request, GenerationStatistics statistics, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        var sequence = new GeneratingSequence(request, request.MaxTokens, _model.Config.VocabularySize, _tokenizer, _endOfSequenceIds, statistics);
        if (request.MaxTokens == 0)
        {
            yield break;
        }

        var admission = new Admission(sequence);
        Enqueue(admission);
        using var registration = cancellationToken.Register(() => RequestCancel(admission));
        try
        {
            var reader = admission.Output.Reader;
            while (await reader.WaitToReadAsync(cancellationToken).ConfigureAwait(false))
            {
                while (reader.TryRead(out var token))
                {
                    // Tokens already made are not handed out after cancellation, as with TextGenerator.
                    cancellationToken.ThrowIfCancellationRequested();
                    yield return token;
                }
            }
        }
        finally
        {
            // A consumer that stops early (or is cancelled) gives its slot back; after a normal end this does nothing.
            RequestCancel(admission);
        }
    }

    private void Enqueue(Admission admission)
    {
        lock (_queueLock)
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (_loopFailure is { } failure)
            {
                throw new InvalidOperationException("The batching loop has stopped after an error; no request can run.", failure);
            }

            // Requests the batch can take now are not counted as waiting.
            var free = Math.Max(0, _options.MaxBatchSize - Volatile.Read(ref _runningCount));
            if (_queue.Count >= _options.MaxQueuedRequests + free)
            {
                throw new BatchingQueueFullException(_queue.Count);
            }

            _queue.Enqueue(admission);
        }

        _work.Set();
    }

    private void RequestCancel(Admission admission)
    {
        if (!admission.CancelRequested)
        {
            admission.CancelRequested = true;
            try
            {
                _work.Set();
            }
            catch (ObjectDisposedException)
            {
                // The engine was disposed first; its streams have already ended.
            }
        }
    }

    private void RunLoop()
    {
        var stopping = _stopping.Token;
        try
        {
            while (!stopping.IsCancellationRequested)
            {
                DropCancelled();
                Admit();
                if (_running.Count == 0)
                {
                    if (_work.Wait(_runner.PulseInterval, stopping))
                    {
                        _work.Reset();
                    }
                    else
                    {
                        _runner.Pulse();
                    }

                    continue;
                }

                Step();
            }
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            // Disposed while idle.
        }
        catch (Exception e)
        {
            LoopFailed(_logger, e);
            FailRunning(e);
            lock (_queueLock)
            {
                _loopFailure = e;
                foreach (var admission in _queue)
                {
                    admission.Output.Writer.TryComplete(e);
                }

                _queue.Clear();
            }
        }
    }

    /// <summary>Sequences whose consumer left end here, at a token boundary, and give back their slot and cache.</summary>
    private void DropCancelled()
    {
        for (var i = _running.Count - 1; i >= 0; i--)
        {
            if (_running[i].CancelRequested)
            {
                _running[i].Sequence.Cancel();
                Retire(_running[i]);
            }
        }
    }

    /// <summary>Moves waiting requests into free slots, starting each from the longest cached prefix of its prompt.</summary>
    private void Admit()
    {
        while (_running.Count < _options.MaxBatchSize)
        {
            Admission? next;
            lock (_queueLock)
            {
                if (!_queue.TryDequeue(out next))
                {
                    break;
                }
            }

            if (next.CancelRequested)
            {
                next.Sequence.Cancel();
                next.Output.Writer.TryComplete();
                continue;
            }

            try
            {
                var sequence = next.Sequence;
                var prompt = sequence.Tokens.Span[..sequence.PromptLength];
                next.Cache = _promptCache.Acquire(prompt, sequence.PromptLength + sequence.MaxTokens, out var reused);
                next.Prefilled = reused;
                Interlocked.Add(ref _promptTokens, sequence.PromptLength);
                if (reused > 0)
                {
                    Interlocked.Increment(ref _promptCacheHits);
                    Interlocked.Add(ref _promptCacheHitTokens, reused);
                }
                else
                {
                    Interlocked.Increment(ref _promptCacheMisses);
                }
            }
            catch (Exception e)
            {
                if (next.Cache is { } cache)
                {
                    _runner.Release(cache);
                    next.Cache = null;
                }

                next.Output.Writer.TryComplete(e);
                continue;
            }

            next.Clock.Start();
            _running.Add(next);
        }

        Volatile.Write(ref _runningCount, _running.Count);
    }

    /// <summary>
    /// One batched forward pass: every decoding sequence feeds its latest token, the sequences still prefilling share
    /// up to PrefillChunkTokens prompt tokens; then each sampled token goes to its consumer.
    /// </summary>
    private void Step()
    {
        var budget = _options.PrefillChunkTokens;
        var count = 0;
        foreach (var admission in _running)
        {
            var sequence = admission.Sequence;
            if (admission.Prefilled < sequence.PromptLength)
            {
                if (budget == 0)
                {
                    continue;
                }

                var take = Math.Min(sequence.PromptLength - admission.Prefilled, budget);
                budget -= take;
                _stepBatch[count] = new BatchedSequence(
                    admission.Cache!, sequence.Tokens.Slice(admission.Prefilled, take), NeedsLogits: admission.Prefilled + take == sequence.PromptLength);
            }
            else
            {
                _stepBatch[count] = new BatchedSequence(admission.Cache!, sequence.LastToken);
            }

            _stepMembers[count++] = admission;
        }

        try
        {
            _runner.Forward(_stepBatch.AsSpan(0, count), _sampleStep, _stepTokens.AsSpan(0, count));
        }
        catch (Exception e)
        {
            StepFailed(_logger, count, e);
            FailRunning(e);
            return;
        }

        Interlocked.Increment(ref _steps);
        Volatile.Write(ref _lastBatchSize, count);
        for (var i = 0; i < count; i++)
        {
            var admission = _stepMembers[i];
            var sequence = admission.Sequence;
            if (admission.Prefilled < sequence.PromptLength)
            {
                admission.Prefilled += _stepBatch[i].Ids.Length;
                if (_stepTokens[i] == GeneratedToken.NoToken)
                {
                    continue;
                }

                sequence.Statistics.PrefillTime = admission.Clock.Elapsed;
                admission.Clock.Restart();
            }

            var emit = sequence.Accept(_stepTokens[i], out var token);
            sequence.Statistics.DecodeTime = admission.Clock.Elapsed;
            if (token.HasToken)
            {
                Interlocked.Increment(ref _generatedTokens);
            }

            if (emit)
            {
                admission.Output.Writer.TryWrite(token);
            }

            if (sequence.Finished)
            {
                Retire(admission);
            }
        }

        Array.Clear(_stepMembers, 0, count);
        Array.Clear(_stepBatch, 0, count);
        Volatile.Write(ref _runningCount, _running.Count);
    }

    /// <summary>Ends a sequence's stream and keeps its cache (the tokens it holds) for prompts that share them.</summary>
    private void Retire(Admission admission)
    {
        _running.Remove(admission);
        admission.Output.Writer.TryComplete();
        if (admission.Cache is { } cache)
        {
            admission.Cache = null;
            _promptCache.Add(admission.Sequence.Tokens[..cache.Length].ToArray(), cache);
        }

        Volatile.Write(ref _runningCount, _running.Count);
    }

    /// <summary>A failed step leaves the caches of its sequences half written: they end with the error and are not kept.</summary>
    private void FailRunning(Exception error)
    {
        foreach (var admission in _running)
        {
            admission.Output.Writer.TryComplete(error);
            if (admission.Cache is { } cache)
            {
                _runner.Release(cache);
                admission.Cache = null;
            }
        }

        _running.Clear();
        Volatile.Write(ref _runningCount, 0);
    }

    [LoggerMessage(Level = LogLevel.Error, Message = "A batched step of {Sequences} sequences failed; they end with its error")]
    private static partial void StepFailed(ILogger logger, int sequences, Exception exception);

    [LoggerMessage(Level = LogLevel.Critical, Message = "The batching loop stopped")]
    private static partial void LoopFailed(ILogger logger, Exception exception);

    /// <summary>One request from the queue to the end of its stream.</summary>
    private sealed class Admission(GeneratingSequence sequence)
    {
        public GeneratingSequence Sequence { get; } = sequence;

        public Channel<GeneratedToken> Output { get; } =
            Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });

        /// <summary>Set by the consumer's side, read by the loop at the next step.</summary>
        public volatile bool CancelRequested;

        public KvCache? Cache { get; set; }

        /// <summary>Prompt tokens in the cache so far.</summary>
        public int Prefilled { get; set; }

        /// <summary>From admission to the first token, then from the first token on.</summary>
        public Stopwatch Clock { get; } = new();
    }
}
