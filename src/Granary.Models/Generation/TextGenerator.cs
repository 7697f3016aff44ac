using System.Diagnostics;
using System.Runtime.CompilerServices;
using Granary.Models.Tokenization;

namespace Granary.Models.Generation;

/// <summary>
/// Prefill + decode loop over a <see cref="CausalLanguageModel"/>: samples each token, streams its text as soon as
/// it is complete UTF-8 and clear of stop strings, and stops on end-of-sequence ids, stop strings or max_tokens.
/// </summary>
public sealed class TextGenerator
{
    private readonly CausalLanguageModel _model;
    private readonly ITextTokenizer? _tokenizer;
    private readonly IReadOnlySet<int> _endOfSequenceIds;

    /// <param name="tokenizer">Needed for text output and stop strings; without it only ids are produced.</param>
    /// <param name="endOfSequenceIds">Ids that end generation; defaults to the tokenizer's.</param>
    public TextGenerator(CausalLanguageModel model, ITextTokenizer? tokenizer, IReadOnlySet<int>? endOfSequenceIds = null)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _tokenizer = tokenizer;
        _endOfSequenceIds = endOfSequenceIds ?? tokenizer?.EndOfSequenceIds ?? new HashSet<int>();
    }

    public CausalLanguageModel Model => _model;

    public IEnumerable<GeneratedToken> Generate(
        GenerationRequest request,
        GenerationStatistics? statistics = null,
        CancellationToken cancellationToken = default) =>
        GenerateCore(request, statistics ?? new GenerationStatistics(), cancellationToken);

    /// <summary>The same as <see cref="Generate"/>, one token per await, for streaming consumers.</summary>
    public async IAsyncEnumerable<GeneratedToken> StreamAsync(
        GenerationRequest request,
        GenerationStatistics? statistics = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        foreach (var token in Generate(request, statistics, cancellationToken))
        {
            yield return token;
            await Task.Yield();
        }
    }

    /// <summary>
    /// Generates for several requests together: their prompts run in one batched prefill and their decode steps in one
    /// batched forward pass each, until every one has finished. Each request keeps its own sampler and seed, so its
    /// tokens are those <see cref="Generate"/> gives it alone. On a sharded model every rank calls this with the same
    /// requests in lockstep; under pipeline parallelism the batch moves through the stages in micro-batches and only
    /// the sampled ids come back from the last stage.
    /// </summary>
    public IReadOnlyList<GeneratedSequence> GenerateBatch(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(requests);
        var vocabularySize = _model.Config.VocabularySize;
        var maxPositions = _model.Config.MaxPositionEmbeddings;
        foreach (var request in requests)
        {
            GeneratingSequence.Validate(request, vocabularySize, _tokenizer);
            if (request.PromptIds.Count >= maxPositions)
            {
                throw new ArgumentException($"A prompt has {request.PromptIds.Count} tokens; the model's context holds {maxPositions}.");
            }
        }

        var outputs = requests.Select(_ => new List<GeneratedToken>()).ToArray();
        var statistics = requests.Select(_ => new GenerationStatistics()).ToArray();
        var sequences = new GeneratingSequence[requests.Count];
        var caches = new KvCache?[requests.Count];
        try
        {
            var active = new List<int>();
            for (var i = 0; i < requests.Count; i++)
            {
                var maxTokens = Math.Min(requests[i].MaxTokens, maxPositions - requests[i].PromptIds.Count);
                sequences[i] = new GeneratingSequence(requests[i], maxTokens, vocabularySize, _tokenizer, _endOfSequenceIds, statistics[i]);
                if (maxTokens > 0)
                {
                    caches[i] = _model.CreateCache(requests[i].PromptIds.Count + maxTokens);
                    active.Add(i);
                }
            }

            BatchTokenSampler sampler = (index, logits) => sequences[active[index]].Sample(logits);
            var batch = new BatchedSequence[active.Count];
            var next = new int[active.Count];
            var clock = Stopwatch.StartNew();
            for (var j = 0; j < active.Count; j++)
            {
                batch[j] = new BatchedSequence(caches[active[j]]!, sequences[active[j]].Tokens);
            }

            if (active.Count > 0)
            {
                _model.ForwardBatch(batch.AsSpan(0, active.Count), sampler, next.AsSpan(0, active.Count));
            }

            foreach (var i in active)
            {
                statistics[i].PrefillTime = clock.Elapsed;
            }

            var start = clock.Elapsed;
            while (active.Count > 0)
            {
                cancellationToken.ThrowIfCancellationRequested();
                var kept = 0;
                for (var j = 0; j < active.Count; j++)
                {
                    var i = active[j];
                    if (sequences[i].Accept(next[j], out var token))
                    {
                        outputs[i].Add(token);
                    }

                    statistics[i].DecodeTime = clock.Elapsed - start;
                    if (!sequences[i].Finished)
                    {
                        active[kept] = i;
                        batch[kept++] = new BatchedSequence(caches[i]!, sequences[i].LastToken);
                    }
                }

                active.RemoveRange(kept, active.Count - kept);
                if (kept > 0)
                {
                    _model.ForwardBatch(batch.AsSpan(0, kept), sampler, next.AsSpan(0, kept));
                }
            }

            return [.. outputs.Select((tokens, i) => new GeneratedSequence(tokens, statistics[i]))];
        }
        finally
        {
            foreach (var cache in caches)
            {
                cache?.Dispose();
            }
        }
    }

    private IEnumerable<GeneratedToken> GenerateCore(
        GenerationRequest request,
        GenerationStatistics statistics,
        CancellationToken cancellationToken)
    {
        var vocabularySize = _model.Config.VocabularySize;
        GeneratingSequence.Validate(request, vocabularySize, _tokenizer);
        var promptLength = request.PromptIds.Count;
        var maxPositions = _model.Config.MaxPositionEmbeddings;
        if (promptLength >= maxPositions)
        {
            throw new ArgumentException(
                $"The prompt has {promptLength} tokens; the model's context holds {maxPositions}.");
        }

        var maxTokens = Math.Min(request.MaxTokens, maxPositions - promptLength);
        var sequence = new GeneratingSequence(request, maxTokens, vocabularySize, _tokenizer, _endOfSequenceIds, statistics);
        if (maxTokens == 0)
        {
            yield break;
        }

        // The token path of the forward pass: under pipeline parallelism the last stage samples and only the id comes back.
        BatchTokenSampler sampler = (_, logits) => sequence.Sample(logits);
        var next = new int[1];
        using var cache = _model.CreateCache(promptLength + maxTokens);
        var clock = Stopwatch.StartNew();
        Step(cache, sequence.Tokens, sampler, next);
        statistics.PrefillTime = clock.Elapsed;
        clock.Restart();

        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var emit = sequence.Accept(next[0], out var token);
            statistics.DecodeTime = clock.Elapsed;
            if (emit)
            {
                yield return token;
            }

            if (sequence.Finished)
            {
                yield break;
            }

            Step(cache, sequence.LastToken, sampler, next);
        }
    }

    private void Step(KvCache cache, ReadOnlyMemory<int> ids, BatchTokenSampler sampler, int[] next) =>
        _model.ForwardBatch([new BatchedSequence(cache, ids)], sampler, next);
}
