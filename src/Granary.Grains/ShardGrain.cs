using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Granary.Abstractions;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace Granary.Grains;

/// <summary>
/// A shard pinned to its silo; the weights it drives are held by that silo's <see cref="ModelHost"/>. Its calls carry
/// control only: the tensors of a split model move over the data-plane group its silo's listener joins.
/// </summary>
[SiloPinnedPlacement]
internal sealed partial class ShardGrain(ModelHost host, ILocalSiloDetails localSilo, ILogger<ShardGrain> logger) : Grain, IShardGrain
{
    private ShardId Id => ShardId.Parse(this.GetPrimaryKeyString());

    public async Task<ShardStatus> LoadAsync(ShardAssignment assignment, CancellationToken cancellationToken)
    {
        CheckAddressedHere(assignment);
        var shard = await host.LoadAsync(assignment, group: null, cancellationToken);
        return shard.ToStatus();
    }

    public Task<DataPlaneEndpoint> OpenDataPlaneAsync(ShardAssignment assignment)
    {
        CheckAddressedHere(assignment);
        // The address the silo advertises to its peers is the one they can reach for the data plane too.
        return Task.FromResult(host.OpenDataPlane(assignment, localSilo.SiloAddress.Endpoint.Address.ToString()));
    }

    public async Task<ShardStatus> LoadInGroupAsync(ShardAssignment assignment, ShardGroup group, CancellationToken cancellationToken)
    {
        CheckAddressedHere(assignment);
        var shard = await host.LoadAsync(assignment, group, cancellationToken);
        return shard.ToStatus();
    }

    public Task StartServingAsync(int planVersion)
    {
        var shard = Hosted();
        if (shard.Group is null || shard.Assignment.PlanVersion != planVersion)
        {
            throw new ShardNotLoadedException($"{Id.ToGrainKey()} (plan {planVersion})");
        }

        shard.StartServing(error => LogFollowFailed(logger, Id.ToGrainKey(), planVersion, error.Message));
        return Task.CompletedTask;
    }

    public Task<int[]> EncodePromptAsync(Prompt prompt) => Task.FromResult(Hosted().Encode(prompt));

    public async IAsyncEnumerable<TokenChunk> GenerateAsync(
        ShardGenerationRequest request,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var shard = Hosted();
        var chunks = Channel.CreateUnbounded<TokenChunk>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var work = host.BeginWork(request.Job.JobId, Id.Model, request.PromptIds.Length + request.ProducedIds.Length);
        // The engine computes synchronously; it gets its own thread so grain turns and the thread pool stay free.
        var producer = Task.Factory.StartNew(
            () =>
            {
                try
                {
                    shard.Generate(request, work, chunk => chunks.Writer.TryWrite(chunk), stop.Token);
                    chunks.Writer.TryComplete();
                }
                catch (Exception e)
                {
                    chunks.Writer.TryComplete(e);
                }
                finally
                {
                    work.Dispose();
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        try
        {
            await foreach (var chunk in chunks.Reader.ReadAllAsync(cancellationToken))
            {
                yield return chunk;
            }
        }
        finally
        {
            // Stop the engine when the caller goes away early, and let it finish its token before the turn ends.
            await stop.CancelAsync();
            await producer;
        }
    }

    public Task UnloadAsync()
    {
        host.Unload(Id);
        return Task.CompletedTask;
    }

    private HostedShard Hosted() => host.Find(Id) ?? throw new ShardNotLoadedException(Id.ToGrainKey());

    private void CheckAddressedHere(ShardAssignment assignment)
    {
        if (assignment.Shard != Id)
        {
            throw new ArgumentException($"Assignment for shard {assignment.Shard} sent to shard {Id}.", nameof(assignment));
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Follower shard {Shard} of plan {PlanVersion} stopped: {Reason}")]
    private static partial void LogFollowFailed(ILogger logger, string shard, int planVersion, string reason);
}
