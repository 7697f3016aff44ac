namespace Granary.Abstractions;

/// <summary>
/// Data-parallel LoRA fine-tuning of a model over the live silos: every silo holds the whole model and trains on its
/// slice of each batch; gradients are summed over the silos' data-plane group. Paths are as the silos see them:
/// <see cref="AdapterPath"/> must be storage every silo reaches (one machine, or a shared file system), because the
/// checkpoint rank 0 writes every <see cref="SaveEvery"/> steps is where the survivors resume after a failure.
/// </summary>
[GenerateSerializer, Immutable, Alias("granary.TrainingJob")]
public sealed record TrainingJob
{
    /// <summary>Folder with train.jsonl ({"text"}, {"prompt","completion"} or {"messages"} records).</summary>
    [Id(0)]
    public required string DataDirectory { get; init; }

    /// <summary>Where the adapters and the optimizer state are saved.</summary>
    [Id(1)]
    public required string AdapterPath { get; init; }

    [Id(2)]
    public int Iterations { get; init; } = 100;

    /// <summary>Examples per silo per step; a step's batch is this times the silos taking part.</summary>
    [Id(3)]
    public int BatchSize { get; init; } = 2;

    [Id(4)]
    public float LearningRate { get; init; } = 1e-4f;

    [Id(5)]
    public int LoraRank { get; init; } = 8;

    /// <summary>Last layers that get adapters; -1 for all.</summary>
    [Id(6)]
    public int LoraLayers { get; init; } = -1;

    /// <summary>Steps between checkpoints of the adapters and the optimizer state.</summary>
    [Id(7)]
    public int SaveEvery { get; init; } = 10;

    [Id(8)]
    public int StepsPerReport { get; init; } = 1;

    [Id(9)]
    public int MaxSequenceLength { get; init; } = 512;

    [Id(10)]
    public int Seed { get; init; }

    /// <summary>Continue from the checkpoint in <see cref="AdapterPath"/> when there is one (a client resuming a lost stream).</summary>
    [Id(11)]
    public bool Resume { get; init; }

    /// <summary>Restarts the earlier attempts of this job went through, carried into the reports.</summary>
    [Id(12)]
    public int PriorRestarts { get; init; }

    public void Validate()
    {
        if (string.IsNullOrWhiteSpace(DataDirectory) || string.IsNullOrWhiteSpace(AdapterPath))
        {
            throw new ArgumentException("A training job needs a data directory and an adapter path.");
        }

        if (Iterations < 1 || BatchSize < 1 || LoraRank < 1 || SaveEvery < 1 || StepsPerReport < 1 || MaxSequenceLength < 2 || !(LearningRate > 0))
        {
            throw new ArgumentException(
                $"Training settings out of range: iterations {Iterations}, batch size {BatchSize}, LoRA rank {LoraRank}, save every {SaveEvery}, " +
                $"steps per report {StepsPerReport}, max sequence length {MaxSequenceLength}, learning rate {LearningRate}.");
        }
    }
}

/// <summary>A training report: the step reached, the mean loss per target token since the last report, and who trains.</summary>
[GenerateSerializer, Immutable, Alias("granary.TrainingProgress")]
public sealed record TrainingProgress(
    [property: Id(0)] long Iteration,
    [property: Id(1)] double TrainLoss,
    [property: Id(2)] float LearningRate,
    [property: Id(3)] double TokensPerSecond,
    [property: Id(4)] long TrainedTokens,
    [property: Id(5)] string[] Silos,
    [property: Id(6)] int Restarts);

/// <summary>A silo's trainer for one model, keyed "{silo}/{model}" and pinned to that silo; tensors go over the data plane.</summary>
[Alias("granary.ITrainerGrain")]
public interface ITrainerGrain : IGrainWithStringKey
{
    /// <summary>Binds this silo's data-plane listener for training session <paramref name="session"/> and returns its endpoint.</summary>
    Task<DataPlaneEndpoint> OpenDataPlaneAsync(Guid session);

    /// <summary>
    /// Forms the session's group as <paramref name="rank"/>, loads the model with fresh adapters (or, when
    /// <paramref name="resume"/> and a checkpoint exists, the checkpoint's adapters and optimizer state) and trains.
    /// Rank 0 streams the reports; the other ranks' streams end when training does.
    /// </summary>
    IAsyncEnumerable<TrainingProgress> TrainAsync(int rank, ShardGroup group, TrainingJob job, bool resume, CancellationToken cancellationToken = default);
}
