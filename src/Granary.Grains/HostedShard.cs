using Granary.Abstractions;
using Granary.Models;
using Granary.Models.Configuration;
using Granary.Models.Generation;
using Granary.Models.Tokenization;
using FinishReason = Granary.Abstractions.FinishReason;

namespace Granary.Grains;

/// <summary>A shard's loaded weights in the model host, and the generations that run on them one at a time.</summary>
public sealed class HostedShard
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly long _weightBytes;
    private bool _released;

    internal HostedShard(ShardAssignment assignment, LoadedModel model, DateTimeOffset loadedAt, TimeSpan loadTime)
    {
        Assignment = assignment;
        Model = model;
        LoadedAt = loadedAt;
        LoadTime = loadTime;
        _weightBytes = Directory.EnumerateFiles(model.Directory, "*.safetensors").Sum(path => new FileInfo(path).Length);
    }

    /// <summary>The assignment of the latest plan that uses this shard.</summary>
    public ShardAssignment Assignment { get; internal set; }

    public LoadedModel Model { get; }

    public DateTimeOffset LoadedAt { get; }

    public TimeSpan LoadTime { get; }

    /// <summary>Bytes of the checkpoint files this shard holds.</summary>
    public long WeightBytes => _weightBytes;

    public ShardStatus ToStatus() => new(Assignment, Model.Directory, WeightBytes, LoadedAt, LoadTime);

    /// <summary>Whether the weights held serve <paramref name="assignment"/> (same layers and tensor split).</summary>
    internal bool Covers(ShardAssignment assignment) =>
        assignment.FirstLayer == Assignment.FirstLayer
        && assignment.LayerCount == Assignment.LayerCount
        && assignment.TensorRank == Assignment.TensorRank
        && assignment.TensorGroupSize == Assignment.TensorGroupSize;

    /// <summary>The prompt as token ids: text and conversations go through the model's chat format.</summary>
    public int[] Encode(Prompt prompt)
    {
        prompt.Validate();
        if (prompt.TokenIds is { } ids)
        {
            return ids;
        }

        var tokenizer = Model.Tokenizer
            ?? throw new InvalidOperationException($"The model in '{Model.Directory}' has no tokenizer.json; send token ids.");
        var messages = new List<ChatMessage>();
        if (prompt.Messages is { } turns)
        {
            if (!tokenizer.HasChatTemplate)
            {
                throw new InvalidOperationException($"The model in '{Model.Directory}' has no chat format; send text or token ids.");
            }

            messages.AddRange(turns.Select(turn => new ChatMessage(turn.Role, turn.Content)));
            return [.. tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false)];
        }

        if (!prompt.UseChatTemplate || !tokenizer.HasChatTemplate)
        {
            return [.. tokenizer.Encode(prompt.Text!, addSpecialTokens: true)];
        }

        if (prompt.System is not null)
        {
            messages.Add(new ChatMessage("system", prompt.System));
        }

        messages.Add(new ChatMessage("user", prompt.Text!));
        return [.. tokenizer.Encode(tokenizer.ApplyChatTemplate(messages), addSpecialTokens: false)];
    }

    /// <summary>
    /// Runs one generation to the end on the calling thread, handing each chunk to <paramref name="emit"/>.
    /// Tokens produced before a failover are replayed as part of the prompt and count towards max_tokens.
    /// </summary>
    internal void Generate(ShardGenerationRequest request, RunningWork work, Action<TokenChunk> emit, CancellationToken cancellationToken)
    {
        _gate.Wait(cancellationToken);
        try
        {
            if (_released)
            {
                // Unloaded while this request waited: to the coordinator that is a lost shard, so it re-plans.
                throw new ShardNotLoadedException(Assignment.Shard.ToGrainKey());
            }

            var job = request.Job;
            var engineRequest = new GenerationRequest
            {
                PromptIds = [.. request.PromptIds, .. request.ProducedIds],
                MaxTokens = Math.Max(0, job.MaxTokens - request.ProducedIds.Length),
                Sampling = Sampling(job.Sampling, Model.Generation),
                StopStrings = job.StopStrings,
                StopAtEndOfSequence = job.StopAtEndOfSequence,
            };
            var statistics = new GenerationStatistics();
            var generator = new TextGenerator(Model.Model, Model.Tokenizer);
            foreach (var token in generator.Generate(engineRequest, statistics, cancellationToken))
            {
                if (token.HasToken)
                {
                    work.CountToken();
                }

                emit(new TokenChunk(token.HasToken ? token.Id : TokenChunk.NoToken, token.Text));
            }

            emit(new TokenChunk(TokenChunk.NoToken, "", new GenerationSummary(
                request.PromptIds.Length,
                request.ProducedIds.Length + statistics.GeneratedTokens,
                statistics.PromptTokensPerSecond,
                statistics.GenerationTokensPerSecond,
                statistics.FinishReason == Models.Generation.FinishReason.Stop ? FinishReason.Stop : FinishReason.Length,
                0)));
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Frees the weights once no generation is using them.</summary>
    internal void Release()
    {
        _gate.Wait();
        try
        {
            if (!_released)
            {
                _released = true;
                Model.Dispose();
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    private static SamplingOptions Sampling(SamplingSettings settings, GenerationConfig defaults) => new()
    {
        Temperature = settings.Temperature ?? (defaults.DoSample ? defaults.Temperature : 0f),
        TopP = settings.TopP ?? defaults.TopP,
        TopK = settings.TopK ?? defaults.TopK,
        MinP = settings.MinP ?? defaults.MinP,
        RepetitionPenalty = settings.RepetitionPenalty ?? defaults.RepetitionPenalty,
        RepetitionContextSize = settings.RepetitionContextSize,
        Seed = settings.Seed,
    };
}
