using Granary.Models.Tokenization;

namespace Granary.Models.Generation;

/// <summary>
/// The per-sequence half of generation, shared by <see cref="TextGenerator"/> and the batching engine: the token
/// history, this sequence's own sampler (so its draws do not depend on what else runs beside it), and what each new
/// token means for the output: its text once it is whole UTF-8 and clear of stop strings, and whether generation ends
/// (end-of-sequence id, stop string, max_tokens).
/// </summary>
internal sealed class GeneratingSequence
{
    private readonly GenerationRequest _request;
    private readonly IReadOnlySet<int> _endOfSequenceIds;
    private readonly GenerationStatistics _statistics;
    private readonly Sampler _sampler;
    private readonly IStreamingDecoder? _decoder;
    private readonly StopStringMatcher _stops;
    private readonly int[] _history;

    /// <param name="maxTokens">max_tokens after the caller fitted it to the context.</param>
    public GeneratingSequence(
        GenerationRequest request, int maxTokens, int vocabularySize, ITextTokenizer? tokenizer, IReadOnlySet<int> endOfSequenceIds, GenerationStatistics statistics)
    {
        _request = request;
        _endOfSequenceIds = endOfSequenceIds;
        _statistics = statistics;
        _sampler = new Sampler(request.Sampling, vocabularySize);
        _decoder = tokenizer?.CreateStreamingDecoder();
        _stops = new StopStringMatcher(request.StopStrings);
        PromptLength = request.PromptIds.Count;
        MaxTokens = maxTokens;
        _history = new int[PromptLength + maxTokens];
        for (var i = 0; i < PromptLength; i++)
        {
            _history[i] = request.PromptIds[i];
        }

        Length = PromptLength;
        statistics.PromptTokens = PromptLength;
        statistics.FinishReason = FinishReason.Length;
    }

    public int PromptLength { get; }

    public int MaxTokens { get; }

    /// <summary>Prompt and generated tokens so far.</summary>
    public int Length { get; private set; }

    public bool Finished { get; private set; }

    public GenerationStatistics Statistics => _statistics;

    /// <summary>The prompt followed by the tokens generated so far.</summary>
    public ReadOnlyMemory<int> Tokens => _history.AsMemory(0, Length);

    /// <summary>The latest token, the input of the next decode step.</summary>
    public ReadOnlyMemory<int> LastToken => _history.AsMemory(Length - 1, 1);

    /// <summary>
    /// Checks what does not depend on the context size: ids in the vocabulary, sampling values, and a tokenizer for
    /// stop strings. Throws <see cref="ArgumentException"/>.
    /// </summary>
    public static void Validate(GenerationRequest request, int vocabularySize, ITextTokenizer? tokenizer)
    {
        ArgumentNullException.ThrowIfNull(request);
        request.Validate(vocabularySize);
        if (request.StopStrings.Count > 0 && tokenizer is null)
        {
            throw new ArgumentException("Stop strings need a tokenizer, and this model has none.");
        }
    }

    /// <summary>Picks the next token from this sequence's logits (modified in place) with its own sampler.</summary>
    public int Sample(Span<float> logits) => _sampler.Sample(logits, _history.AsSpan(0, Length));

    /// <summary>
    /// Takes the sampled token. Returns true with the item to emit: the token and the text it completed, or, when an
    /// end-of-sequence id ends generation with text still held back, that text with no token.
    /// </summary>
    public bool Accept(int next, out GeneratedToken output)
    {
        if (Finished)
        {
            throw new InvalidOperationException("The sequence has finished.");
        }

        if (_request.StopAtEndOfSequence && (_endOfSequenceIds.Contains(next) || _request.StopTokenIds.Contains(next)))
        {
            Finish(FinishReason.Stop);
            var tail = _decoder is null ? string.Empty : _stops.Push(_decoder.Flush()) + _stops.Flush();
            output = new GeneratedToken(GeneratedToken.NoToken, tail);
            return tail.Length > 0;
        }

        _history[Length++] = next;
        _statistics.GeneratedTokens++;
        var text = _decoder is null ? string.Empty : _stops.Push(_decoder.Push(next));
        if (_stops.Stopped)
        {
            Finish(FinishReason.Stop);
        }
        else if (Length - PromptLength == MaxTokens)
        {
            Finish(FinishReason.Length);
            if (_decoder is not null)
            {
                text += _stops.Push(_decoder.Flush()) + _stops.Flush();
            }
        }

        output = new GeneratedToken(next, text);
        return true;
    }

    /// <summary>Marks the sequence cancelled (its consumer left) so it leaves the batch.</summary>
    public void Cancel() => Finish(FinishReason.Cancelled);

    private void Finish(FinishReason reason)
    {
        Finished = true;
        _statistics.FinishReason = reason;
    }
}
