using System.Diagnostics;
using Granary.Abstractions;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.Generation;
using FinishReason = Granary.Abstractions.FinishReason;

namespace Granary.Grains;

/// <summary>
/// Generation of a model split over several shards. Every shard must run the same forward passes in the same order,
/// because each pass's collectives join all of them. The leader (world rank 0) samples, and before every pass it
/// broadcasts over the data plane what the pass computes: the prompt (prefill), one token id (a decode step), or the
/// end of the generation. The other shards only run the passes they are told to. Logits reach every shard (the
/// vocabulary-split head gathers them, the last pipeline stage broadcasts them), so the leader samples from the full
/// vector exactly as a single process would.
/// </summary>
internal static class Lockstep
{
    private const int Prefill = 1;
    private const int Step = 2;
    private const int End = 3;

    // [command, prompt length, cache capacity, token id]
    private const int CommandLength = 4;

    /// <summary>The leader's side: one generation, with every chunk handed to <paramref name="emit"/>.</summary>
    public static void Lead(
        LoadedModel loaded,
        Group world,
        ShardGenerationRequest request,
        SamplingOptions sampling,
        RunningWork work,
        Action<TokenChunk> emit,
        CancellationToken cancellationToken)
    {
        var model = loaded.Model;
        var job = request.Job;
        int[] prompt = [.. request.PromptIds, .. request.ProducedIds];
        var command = new int[CommandLength];
        var groupFailed = false;
        try
        {
            var engineRequest = new GenerationRequest
            {
                PromptIds = prompt,
                MaxTokens = Math.Max(0, job.MaxTokens - request.ProducedIds.Length),
                Sampling = sampling,
                StopStrings = job.StopStrings,
                StopAtEndOfSequence = job.StopAtEndOfSequence,
            };
            var vocabularySize = model.Config.VocabularySize;
            engineRequest.Validate(vocabularySize);
            var maxPositions = model.Config.MaxPositionEmbeddings;
            if (prompt.Length >= maxPositions)
            {
                throw new ArgumentException($"The prompt has {prompt.Length} tokens; the model's context holds {maxPositions}.");
            }

            if (job.StopStrings.Length > 0 && loaded.Tokenizer is null)
            {
                throw new ArgumentException("Stop strings need a tokenizer, and this model has none.");
            }

            var maxTokens = Math.Min(engineRequest.MaxTokens, maxPositions - prompt.Length);
            var summary = maxTokens == 0
                ? new GenerationSummary(request.PromptIds.Length, request.ProducedIds.Length, 0, 0, FinishReason.Length, 0)
                : Run(loaded, world, request, engineRequest, maxTokens, command, work, emit, cancellationToken);
            emit(new TokenChunk(TokenChunk.NoToken, "", summary));
        }
        catch (CollectiveException)
        {
            groupFailed = true;
            throw;
        }
        finally
        {
            // Followers wait for a command after every pass, also when this generation was cancelled or refused.
            if (!groupFailed)
            {
                Broadcast(world, command, End);
            }
        }
    }

    private static GenerationSummary Run(
        LoadedModel loaded,
        Group world,
        ShardGenerationRequest request,
        GenerationRequest engineRequest,
        int maxTokens,
        int[] command,
        RunningWork work,
        Action<TokenChunk> emit,
        CancellationToken cancellationToken)
    {
        var model = loaded.Model;
        var prompt = engineRequest.PromptIds;
        var capacity = prompt.Count + maxTokens;
        var history = new int[capacity];
        for (var i = 0; i < prompt.Count; i++)
        {
            history[i] = prompt[i];
        }

        Broadcast(world, command, Prefill, prompt.Count, capacity);
        world.Broadcast<int>(history.AsSpan(0, prompt.Count), root: 0);

        var endOfSequence = loaded.Tokenizer?.EndOfSequenceIds ?? new HashSet<int>();
        var sampler = new Sampler(engineRequest.Sampling, model.Config.VocabularySize);
        var decoder = loaded.Tokenizer?.CreateStreamingDecoder();
        var stops = new StopStringMatcher(engineRequest.StopStrings);
        var logits = new float[model.Config.VocabularySize];
        using var cache = model.CreateCache(capacity);
        var clock = Stopwatch.StartNew();
        model.Forward(history.AsSpan(0, prompt.Count), cache, logits);
        var prefill = clock.Elapsed;
        clock.Restart();

        var length = prompt.Count;
        var finish = FinishReason.Length;
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var next = sampler.Sample(logits, history.AsSpan(0, length));
            if (engineRequest.StopAtEndOfSequence && endOfSequence.Contains(next))
            {
                finish = FinishReason.Stop;
                if (decoder is not null && (stops.Push(decoder.Flush()) + stops.Flush()) is { Length: > 0 } tail)
                {
                    emit(new TokenChunk(TokenChunk.NoToken, tail));
                }

                break;
            }

            history[length++] = next;
            work.CountToken();
            var text = decoder is null ? "" : stops.Push(decoder.Push(next));
            if (stops.Stopped)
            {
                finish = FinishReason.Stop;
                emit(new TokenChunk(next, text));
                break;
            }

            if (length - prompt.Count == maxTokens)
            {
                emit(new TokenChunk(next, decoder is null ? text : text + stops.Push(decoder.Flush()) + stops.Flush()));
                break;
            }

            emit(new TokenChunk(next, text));
            Broadcast(world, command, Step, token: next);
            model.Forward(history.AsSpan(length - 1, 1), cache, logits);
        }

        var decode = clock.Elapsed;
        var generated = length - prompt.Count;
        return new GenerationSummary(
            request.PromptIds.Length,
            request.ProducedIds.Length + generated,
            prefill > TimeSpan.Zero ? prompt.Count / prefill.TotalSeconds : 0,
            generated > 1 && decode > TimeSpan.Zero ? (generated - 1) / decode.TotalSeconds : 0,
            finish,
            0);
    }

    /// <summary>
    /// A follower's side of one generation: runs the passes the leader broadcasts until it ends the generation. It
    /// cannot stop on its own between passes without leaving its peers waiting, so it has no cancellation; a leader
    /// that goes away fails the group within its timeout.
    /// </summary>
    public static void Follow(CausalLanguageModel model, Group world, RunningWork work)
    {
        var command = new int[CommandLength];
        var token = new int[1];
        var logits = new float[model.Config.VocabularySize];
        KvCache? cache = null;
        try
        {
            while (true)
            {
                world.Broadcast<int>(command, root: 0);
                switch (command[0])
                {
                    case Prefill:
                        var prompt = new int[command[1]];
                        world.Broadcast<int>(prompt, root: 0);
                        cache?.Dispose();
                        cache = model.CreateCache(command[2]);
                        model.Forward(prompt, cache, logits);
                        break;
                    case Step when cache is not null:
                        token[0] = command[3];
                        model.Forward(token, cache, logits);
                        work.CountToken();
                        break;
                    case End:
                        return;
                    default:
                        throw new CollectiveException($"The leader sent command {command[0]}, which a follower cannot run here.", peerRank: 0, operation: "Lockstep");
                }
            }
        }
        finally
        {
            cache?.Dispose();
        }
    }

    private static void Broadcast(Group world, int[] command, int what, int promptLength = 0, int capacity = 0, int token = 0)
    {
        command[0] = what;
        command[1] = promptLength;
        command[2] = capacity;
        command[3] = token;
        world.Broadcast<int>(command, root: 0);
    }
}
