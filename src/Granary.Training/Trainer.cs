using System.Diagnostics;
using System.Runtime.InteropServices;
using Granary.Collectives;
using Granary.Models.Safetensors;

namespace Granary.Training;

/// <summary>Settings of a training run (mlx_lm.lora's names where they exist).</summary>
public sealed class TrainerOptions
{
    public int BatchSize { get; set; } = 4;

    public int Iterations { get; set; } = 1000;

    public float LearningRate { get; set; } = 1e-5f;

    public int WarmupSteps { get; set; }

    /// <summary>Cosine decay over the iterations after warm-up, down to <see cref="FinalLearningRate"/>.</summary>
    public bool CosineDecay { get; set; }

    public float FinalLearningRate { get; set; }

    /// <summary>"adamw" or "sgd".</summary>
    public string Optimizer { get; set; } = "adamw";

    public float WeightDecay { get; set; } = 0.01f;

    public float Momentum { get; set; }

    /// <summary>Clip the global gradient norm to this; null leaves gradients alone.</summary>
    public double? MaxGradientNorm { get; set; }

    /// <summary>Batches whose gradients are summed into one update.</summary>
    public int GradientAccumulationSteps { get; set; } = 1;

    public int StepsPerReport { get; set; } = 10;

    public int StepsPerEval { get; set; } = 200;

    /// <summary>Validation batches per evaluation; -1 for the whole set.</summary>
    public int ValidationBatches { get; set; } = 25;

    public int SaveEvery { get; set; } = 100;

    public int MaxSequenceLength { get; set; } = 2048;

    public bool MaskPrompt { get; set; }

    public int Seed { get; set; }

    public string AdapterPath { get; set; } = "adapters";

    /// <summary>Continue from the adapters and optimizer state in <see cref="AdapterPath"/>.</summary>
    public bool Resume { get; set; }

    public void Validate()
    {
        if (BatchSize <= 0 || Iterations <= 0 || GradientAccumulationSteps <= 0 || StepsPerReport <= 0 || StepsPerEval <= 0 || SaveEvery <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(BatchSize), "Batch size, iterations, accumulation and report/eval/save intervals must be positive.");
        }

        if (!(LearningRate > 0) || WarmupSteps < 0 || ValidationBatches is 0 or < -1)
        {
            throw new ArgumentOutOfRangeException(nameof(LearningRate), "Learning rate must be positive, warm-up non-negative, validation batches positive or -1.");
        }

        if (Optimizer is not ("adamw" or "sgd"))
        {
            throw new ArgumentException($"Unknown optimizer '{Optimizer}'; use adamw or sgd.", nameof(Optimizer));
        }
    }
}

/// <summary>One report line's numbers.</summary>
public sealed record TrainingReport(long Iteration, double TrainLoss, double? ValidationLoss, float LearningRate, double IterationsPerSecond, double TokensPerSecond, long TrainedTokens, long PeakMemoryBytes);

/// <summary>
/// The training loop: batches, accumulation, clipping, schedule, optimizer, reports, checkpoints. Data parallel when
/// given a <see cref="Group"/> of several ranks: every rank reads the same global batches of BatchSize x ranks
/// sequences, trains on its own slice, and the gradients, losses and token counts are summed with AllSum, so a step
/// equals one single-rank step over the global batch. Rank 0 writes the checkpoints.
/// </summary>
public sealed class Trainer
{
    public const string OptimizerFileName = "optimizer.safetensors";

    private readonly TrainingModel _model;
    private readonly TrainerOptions _options;
    private readonly Group? _world;

    public Trainer(TrainingModel model, TrainerOptions options, Group? world = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _model = model;
        _options = options;
        _world = world is { Size: > 1 } ? world : null;
        Optimizer = options.Optimizer == "sgd"
            ? new Sgd(model.TrainableParameters, options.Momentum, options.WeightDecay)
            : new AdamW(model.TrainableParameters, weightDecay: options.WeightDecay);
        Schedule = new LearningRateSchedule(
            options.LearningRate, options.WarmupSteps, options.CosineDecay ? Math.Max(0, options.Iterations - options.WarmupSteps) : 0, options.FinalLearningRate);
    }

    public Optimizer Optimizer { get; }

    /// <summary>Time of the last step spent in the gradient AllSum (zero on one rank).</summary>
    public TimeSpan LastAllSumTime { get; private set; }

    private int Ranks => _world?.Size ?? 1;

    public LearningRateSchedule Schedule { get; }

    public IReadOnlyList<TrainingReport> Train(
        IReadOnlyList<TrainingExample> train, IReadOnlyList<TrainingExample>? validation, Action<TrainingReport> report, CancellationToken cancellation = default)
    {
        var batcher = new Batcher(train, _options.BatchSize * Ranks, _options.MaxSequenceLength, _options.MaskPrompt);
        var validationBatcher = validation is null ? null : new Batcher(validation, Math.Min(_options.BatchSize, validation.Count), _options.MaxSequenceLength, _options.MaskPrompt);
        if (_options.Resume)
        {
            AdapterFiles.Load(_model, _options.AdapterPath);
            LoadOptimizer(Path.Combine(_options.AdapterPath, OptimizerFileName));
        }

        var reports = new List<TrainingReport>();
        using var batches = batcher.Batches(repeat: true, _options.Seed).GetEnumerator();

        // A resumed run skips the batches already used, so the data order goes on as if never interrupted.
        for (var skip = 0L; skip < Optimizer.Step * _options.GradientAccumulationSteps; skip++)
        {
            batches.MoveNext();
        }

        double windowLoss = 0;
        long windowTokens = 0, trainedTokens = 0, windowSteps = 0;
        var clock = Stopwatch.StartNew();
        while (Optimizer.Step < _options.Iterations)
        {
            cancellation.ThrowIfCancellationRequested();
            var step = Optimizer.Step;
            var micro = new List<TokenBatch>();
            for (var i = 0; i < _options.GradientAccumulationSteps; i++)
            {
                batches.MoveNext();
                micro.Add(batches.Current);
            }

            var (lossSum, tokens) = Step(micro, (ulong)step);
            windowLoss += lossSum;
            windowTokens += tokens;
            trainedTokens += tokens;
            windowSteps++;

            var iteration = Optimizer.Step;
            var evaluate = validationBatcher is not null && (iteration % _options.StepsPerEval == 0 || iteration == _options.Iterations);
            if (iteration % _options.StepsPerReport == 0 || iteration == _options.Iterations || evaluate)
            {
                var seconds = clock.Elapsed.TotalSeconds;
                double? validationLoss = evaluate ? Evaluate(validationBatcher!, _options.ValidationBatches) : null;
                var line = new TrainingReport(
                    iteration, windowLoss / Math.Max(1, windowTokens), validationLoss, Schedule.At(step), windowSteps / seconds,
                    windowTokens / seconds, trainedTokens, Process.GetCurrentProcess().PeakWorkingSet64);
                reports.Add(line);
                report(line);
                (windowLoss, windowTokens, windowSteps) = (0, 0, 0);
                clock.Restart();
            }

            if (iteration % _options.SaveEvery == 0 || iteration == _options.Iterations)
            {
                SaveCheckpoint();
            }
        }

        return reports;
    }

    /// <summary>
    /// One update from several global batches: gradients of the summed token losses, divided by the total target
    /// count, so accumulation (and splitting a batch over ranks) equals one large batch. Returns the summed loss and
    /// target count of all ranks.
    /// </summary>
    public (double LossSum, long Tokens) Step(IReadOnlyList<TokenBatch> batches, ulong seed)
    {
        _model.ZeroGradients();
        double lossSum = 0;
        long tokens = 0;
        for (var i = 0; i < batches.Count; i++)
        {
            var batch = batches[i];
            if (_world is not null)
            {
                var perRank = batch.BatchSize / _world.Size;
                batch = batch.Slice(_world.Rank * perRank, perRank);
            }

            var (loss, count) = _model.AccumulateGradients(batch, 1f, (seed * 1_000_003UL) + (ulong)(i * Ranks) + (ulong)(_world?.Rank ?? 0));
            lossSum += loss;
            tokens += count;
        }

        if (_world is not null)
        {
            (lossSum, tokens) = SumOverRanks(_world, lossSum, tokens);
        }

        if (tokens > 0)
        {
            GradientClipping.Scale(_model.TrainableParameters, 1f / tokens);
            if (_options.MaxGradientNorm is { } maxNorm)
            {
                GradientClipping.ClipByGlobalNorm(_model.TrainableParameters, maxNorm);
            }

            Optimizer.Update(Schedule.At(Optimizer.Step));
        }

        return (lossSum, tokens);
    }

    /// <summary>Mean loss per target token over up to <paramref name="maxBatches"/> batches (-1: all).</summary>
    public double Evaluate(Batcher batcher, int maxBatches)
    {
        double lossSum = 0;
        long tokens = 0;
        var taken = 0;
        foreach (var batch in batcher.Batches(repeat: false))
        {
            if (maxBatches >= 0 && taken++ >= maxBatches)
            {
                break;
            }

            var (loss, count) = _model.Evaluate(batch);
            lossSum += loss;
            tokens += count;
        }

        return lossSum / Math.Max(1, tokens);
    }

    public void SaveCheckpoint()
    {
        if (_world is { Rank: not 0 })
        {
            return;
        }

        AdapterFiles.Save(_model, _options.AdapterPath);
        var writer = new SafetensorsWriter();
        writer.Metadata["step"] = Optimizer.Step.ToString(System.Globalization.CultureInfo.InvariantCulture);
        foreach (var (name, values) in Optimizer.State())
        {
            writer.Add(name, values, values.Length);
        }

        AdapterFiles.WriteAtomically(Path.Combine(_options.AdapterPath, OptimizerFileName), writer.Save);
    }

    // One AllSum over every gradient plus the loss; the token count goes as an integer so it stays exact.
    private (double LossSum, long Tokens) SumOverRanks(Group world, double lossSum, long tokens)
    {
        var clock = Stopwatch.StartNew();
        var parameters = _model.TrainableParameters;
        var buffer = new float[parameters.Sum(p => p.Value.Length) + 1];
        var offset = 0;
        foreach (var p in parameters)
        {
            p.Gradient.AsSpan().CopyTo(buffer.AsSpan(offset));
            offset += p.Value.Length;
        }

        buffer[offset] = (float)lossSum;
        world.AllSum<float>(buffer);
        Span<int> count = [checked((int)tokens)];
        world.AllSum(count);
        offset = 0;
        foreach (var p in parameters)
        {
            buffer.AsSpan(offset, p.Value.Length).CopyTo(p.Gradient);
            offset += p.Value.Length;
        }

        LastAllSumTime = clock.Elapsed;
        return (buffer[offset], count[0]);
    }

    private void LoadOptimizer(string path)
    {
        if (!File.Exists(path))
        {
            throw new FileNotFoundException($"Cannot resume: {path} is missing.", path);
        }

        using var file = SafetensorsFile.Open(path);
        var state = file.Tensors.Keys.ToDictionary(n => n, n => MemoryMarshal.Cast<byte, float>(file.GetBytes(n)).ToArray());
        if (!file.Metadata.TryGetValue("step", out var stepText) || !long.TryParse(stepText, System.Globalization.CultureInfo.InvariantCulture, out var step))
        {
            throw new InvalidDataException($"{path}: no step in the metadata.");
        }

        Optimizer.RestoreState(step, state);
    }
}
