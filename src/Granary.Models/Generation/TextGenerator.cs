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

    private IEnumerable<GeneratedToken> GenerateCore(
        GenerationRequest request,
        GenerationStatistics statistics,
        CancellationToken cancellationToken)
    {
        var vocabularySize = _model.Config.VocabularySize;
        request.Validate(vocabularySize);
        if (request.StopStrings.Count > 0 && _tokenizer is null)
        {
            throw new ArgumentException("Stop strings need a tokenizer, and this model has none.");
        }

        var promptLength = request.PromptIds.Count;
        var maxPositions = _model.Config.MaxPositionEmbeddings;
        if (promptLength >= maxPositions)
        {
            throw new ArgumentException(
                $"The prompt has {promptLength} tokens; the model's context holds {maxPositions}.");
        }

        var maxTokens = Math.Min(request.MaxTokens, maxPositions - promptLength);
        statistics.PromptTokens = promptLength;
        statistics.FinishReason = FinishReason.Length;
        if (maxTokens == 0)
        {
            yield break;
        }

        var sampler = new Sampler(request.Sampling, vocabularySize);
        var decoder = _tokenizer?.CreateStreamingDecoder();
        var stops = new StopStringMatcher(request.StopStrings);
        var history = new int[promptLength + maxTokens];
        for (var i = 0; i < promptLength; i++)
        {
            history[i] = request.PromptIds[i];
        }

        var logits = new float[vocabularySize];
        using var cache = _model.CreateCache(promptLength + maxTokens);
        var clock = Stopwatch.StartNew();
        _model.Forward(history.AsSpan(0, promptLength), cache, logits);
        statistics.PrefillTime = clock.Elapsed;
        clock.Restart();

        var length = promptLength;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var next = sampler.Sample(logits, history.AsSpan(0, length));
            if (request.StopAtEndOfSequence && (_endOfSequenceIds.Contains(next) || request.StopTokenIds.Contains(next)))
            {
                statistics.FinishReason = FinishReason.Stop;
                break;
            }

            history[length++] = next;
            statistics.GeneratedTokens++;
            var text = decoder is null ? string.Empty : stops.Push(decoder.Push(next));
            if (stops.Stopped)
            {
                statistics.FinishReason = FinishReason.Stop;
                statistics.DecodeTime = clock.Elapsed;
                yield return new GeneratedToken(next, text);
                yield break;
            }

            if (length - promptLength == maxTokens)
            {
                var rest = decoder is null ? string.Empty : text + stops.Push(decoder.Flush()) + stops.Flush();
                statistics.DecodeTime = clock.Elapsed;
                yield return new GeneratedToken(next, rest);
                yield break;
            }

            statistics.DecodeTime = clock.Elapsed;
            yield return new GeneratedToken(next, text);
            _model.Forward(history.AsSpan(length - 1, 1), cache, logits);
        }

        statistics.DecodeTime = clock.Elapsed;
        if (decoder is not null)
        {
            var tail = stops.Push(decoder.Flush()) + stops.Flush();
            if (tail.Length > 0)
            {
                yield return new GeneratedToken(GeneratedToken.NoToken, tail);
            }
        }
    }
}
