using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Granary.Abstractions;
using Granary.Collectives;
using Granary.Models;
using Granary.Tensors.Cpu;
using Granary.Training;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace Granary.Grains;

/// <summary>
/// One silo's part of a data-parallel fine-tuning session: the whole model with LoRA adapters on the CPU backend,
/// trained on this rank's slice of every batch, gradients summed over the session's data-plane group. The weights
/// are loaded for the session (training needs an f32 forward pass of its own), not shared with inference shards.
/// </summary>
[SiloPinnedPlacement]
internal sealed partial class TrainerGrain(ModelHost host, ILocalSiloDetails localSilo, ILogger<TrainerGrain> logger) : Grain, ITrainerGrain
{
    private (Guid Session, DataPlaneListener Listener)? _open;

    private string Model => this.GetPrimaryKeyString()[(SiloPinnedKey.SiloNameOf(this.GetPrimaryKeyString()).Length + 1)..];

    public static string KeyOf(string siloName, string model)
    {
        SiloPinnedKey.ValidateSiloName(siloName);
        return $"{siloName}{SiloPinnedKey.Separator}{model}";
    }

    public Task<DataPlaneEndpoint> OpenDataPlaneAsync(Guid session)
    {
        _open?.Listener.Dispose();
        var listener = DataPlaneListener.Bind(localSilo.SiloAddress.Endpoint.Address.ToString());
        _open = (session, listener);
        var endpoint = listener.Endpoint;
        return Task.FromResult(new DataPlaneEndpoint(endpoint.Address, endpoint.Port, endpoint.HostId));
    }

    public async IAsyncEnumerable<TrainingProgress> TrainAsync(
        int rank, ShardGroup group, TrainingJob job, bool resume, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        job.Validate();
        if (_open is not { } open || open.Session != group.GroupId)
        {
            throw new ShardGroupException(this.GetPrimaryKeyString(), $"Trainer {this.GetPrimaryKeyString()} has no data-plane listener for session {group.GroupId}.");
        }

        _open = null;
        var reports = Channel.CreateUnbounded<TrainingProgress>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var work = host.BeginWork($"train-{group.GroupId.ToString("N")[..8]}-{rank}", Model, 0);
        var trainer = Task.Factory.StartNew(
            () =>
            {
                try
                {
                    Train(rank, group, open.Listener, job, resume, report => reports.Writer.TryWrite(report), work, stop.Token);
                    reports.Writer.TryComplete();
                }
                catch (CollectiveException e)
                {
                    reports.Writer.TryComplete(new ShardGroupException(this.GetPrimaryKeyString(), $"Training rank {rank}: the data-plane group failed: {e.Message}"));
                }
                catch (Exception e)
                {
                    reports.Writer.TryComplete(e);
                }
                finally
                {
                    open.Listener.Dispose();
                    work.Dispose();
                }
            },
            CancellationToken.None,
            TaskCreationOptions.LongRunning,
            TaskScheduler.Default);
        try
        {
            await foreach (var report in reports.Reader.ReadAllAsync(cancellationToken))
            {
                yield return report;
            }
        }
        finally
        {
            await stop.CancelAsync();
            await trainer;
        }
    }

    private void Train(
        int rank, ShardGroup group, DataPlaneListener listener, TrainingJob job, bool resume, Action<TrainingProgress> report, RunningWork work, CancellationToken cancellationToken)
    {
        var options = new CollectiveOptions
        {
            Rank = rank,
            WorldSize = group.Peers.Length,
            Backend = group.Backend,
            Timeout = group.Timeout,
            ConnectTimeout = group.ConnectTimeout,
        };
        using var world = Group.Init(options, listener, [.. group.Peers.Select(peer => new DataPlanePeer(peer.Address, peer.Port, peer.HostId))], group.GroupId);
        using var backend = new CpuBackend(host.Threads);
        using var loaded = ModelLoader.Load(host.ResolveModelDirectory(Model), backend);
        var tokenizer = loaded.Tokenizer ?? throw new InvalidOperationException($"The model in '{loaded.Directory}' has no tokenizer.json, so it cannot read training text.");
        var model = TrainingModel.Create(loaded.Model, new FineTuneOptions
        {
            Seed = job.Seed,
            Threads = host.Threads ?? 0,
            Lora = new LoraOptions { Rank = job.LoraRank, LayerCount = job.LoraLayers },
        });
        var checkpoint = Path.Combine(job.AdapterPath, Trainer.OptimizerFileName);
        var trainerOptions = new TrainerOptions
        {
            BatchSize = job.BatchSize,
            Iterations = job.Iterations,
            LearningRate = job.LearningRate,
            StepsPerReport = job.StepsPerReport,
            StepsPerEval = int.MaxValue,
            SaveEvery = job.SaveEvery,
            MaxSequenceLength = job.MaxSequenceLength,
            Seed = job.Seed,
            AdapterPath = job.AdapterPath,
            Resume = resume && File.Exists(checkpoint),
        };
        var train = JsonlDataset.LoadSplit(job.DataDirectory, "train", tokenizer)
            ?? throw new FileNotFoundException($"{Path.Combine(job.DataDirectory, "train.jsonl")} does not exist on silo {localSilo.Name}.");
        LogTraining(logger, Model, rank, group.Peers.Length, trainerOptions.Resume);
        new Trainer(model, trainerOptions, world).Train(
            train,
            validation: null,
            line =>
            {
                work.CountToken();
                if (rank == 0)
                {
                    report(new TrainingProgress(line.Iteration, line.TrainLoss, line.LearningRate, line.TokensPerSecond, line.TrainedTokens, [], 0));
                }
            },
            cancellationToken);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "Training {Model} as rank {Rank} of {Size} (resuming from a checkpoint: {Resume})")]
    private static partial void LogTraining(ILogger logger, string model, int rank, int size, bool resume);
}
