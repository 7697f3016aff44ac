using System.Globalization;
using Granary.Collectives;
using Granary.Models;
using Granary.Models.BuiltIn;
using Granary.Tensors.Cpu;
using Granary.Training;

namespace Granary.Cli.Commands;

/// <summary>
/// `granary lora`: LoRA / QLoRA / DoRA / full fine-tuning, like mlx_lm.lora; data parallel under `granary launch`.
/// `--backend cuda` runs the matrix products of training on this process's GPU (each launched rank its own) and sums
/// the gradients over NCCL; the model is still read from host memory and the rest of a step runs on the host.
/// </summary>
internal static class LoraCommand
{
    public const string Summary = "fine-tune with LoRA (or --fine-tune-type dora|full) on --data DIR; --train and/or --test";

    private static readonly string[] ValueOptions =
    [
        "--model", "--data", "--batch-size", "--iters", "--learning-rate", "--steps-per-report", "--steps-per-eval",
        "--val-batches", "--test-batches", "--adapter-path", "--save-every", "--num-layers", "--rank", "--scale", "--alpha",
        "--dropout", "--keys", "--fine-tune-type", "--max-seq-length", "--optimizer", "--weight-decay", "--momentum",
        "--warmup", "--min-learning-rate", "--grad-accumulation-steps", "--max-grad-norm", "--seed", "--threads", "--backend",
    ];

    private static readonly string[] FlagOptions = ["--train", "--test", "--resume", "--mask-prompt", "--grad-checkpoint", "--cosine-decay"];

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(args, ValueOptions, FlagOptions);
        var modelDirectory = arguments.Get("--model") ?? BuiltInModel.EnsureCreated(Console.Error);
        var dataDirectory = arguments.Get("--data") ?? throw new UsageException("--data DIR is required.");
        if (!arguments.Has("--train") && !arguments.Has("--test"))
        {
            throw new UsageException("give --train, --test or both.");
        }

        var fineTune = FineTuneOptionsFrom(arguments);
        var trainer = TrainerOptionsFrom(arguments);
        using var cancel = ConsoleCancellation.Create();

        // Under `granary launch` every rank trains on its slice of each batch (data parallel); --batch-size is per rank.
        using var world = CollectiveOptions.FromEnvironment() is null ? null : Group.Init(backend: CollectiveBackendFor(fineTune.Device));
        using var backend = new CpuBackend(arguments.GetIntOrNull("--threads"));
        Console.Error.WriteLine($"Loading {modelDirectory}...");
        using var loaded = ModelLoader.Load(modelDirectory, backend);
        var tokenizer = loaded.Tokenizer ?? throw new UsageException($"the model in '{modelDirectory}' has no tokenizer.json.");
        if (arguments.Has("--test") && !arguments.Has("--train"))
        {
            // Testing trained adapters: their own config decides the shape of the adapters.
            var device = fineTune.Device;
            fineTune = AdapterFiles.ReadOptions(trainer.AdapterPath);
            fineTune.Threads = arguments.GetInt("--threads", 0);
            fineTune.Device = device;
        }

        using var model = TrainingModel.Create(loaded.Model, fineTune);
        if (fineTune.Device != TrainingDevice.Cpu)
        {
            Console.Error.WriteLine($"Matrix products on {model.Device}{(world is null ? "" : $", gradients summed over {world.Backend}")}.");
        }

        var trainable = model.TrainableParameters.Sum(p => (long)p.Value.Length);
        var total = model.Parameters.Sum(p => (long)p.Value.Length) + model.Layers.SelectMany(l => l.Linears()).Where(l => l.Weight is null).Sum(l => (long)l.InFeatures * l.OutFeatures);
        Console.WriteLine($"Trainable parameters: {100.0 * trainable / Math.Max(1, total):F3}% ({trainable / 1e6:F3}M/{total / 1e6:F3}M)");

        var session = new Trainer(model, trainer, world);
        if (arguments.Has("--train"))
        {
            var train = JsonlDataset.LoadSplit(dataDirectory, "train", tokenizer) ?? throw new UsageException($"{Path.Combine(dataDirectory, "train.jsonl")} does not exist.");
            var valid = JsonlDataset.LoadSplit(dataDirectory, "valid", tokenizer);
            Console.WriteLine($"Training on {train.Count} examples{(valid is null ? "" : $", validating on {valid.Count}")}; adapters in {trainer.AdapterPath}.");
            session.Train(train, valid, world is { Rank: > 0 } ? _ => { } : Print, cancel.Token);
            Console.WriteLine($"Saved adapters to {Path.Combine(trainer.AdapterPath, AdapterFiles.WeightsFileName)}.");
        }
        else
        {
            AdapterFiles.Load(model, trainer.AdapterPath);
        }

        if (arguments.Has("--test"))
        {
            var test = JsonlDataset.LoadSplit(dataDirectory, "test", tokenizer) ?? throw new UsageException($"{Path.Combine(dataDirectory, "test.jsonl")} does not exist.");
            var batcher = new Batcher(test, Math.Min(trainer.BatchSize, test.Count), trainer.MaxSequenceLength, trainer.MaskPrompt);
            var loss = session.Evaluate(batcher, arguments.GetInt("--test-batches", -1));
            Console.WriteLine(FormattableString.Invariant($"Test loss {loss:F3}, Test ppl {Math.Exp(loss):F3}."));
        }

        return Task.FromResult(0);
    }

    private static void Print(TrainingReport r)
    {
        var line = r.ValidationLoss is { } validation
            ? FormattableString.Invariant($"Iter {r.Iteration}: Val loss {validation:F3}, ")
            : FormattableString.Invariant($"Iter {r.Iteration}: ");
        Console.WriteLine(line + FormattableString.Invariant(
            $"Train loss {r.TrainLoss:F3}, Learning Rate {r.LearningRate:E3}, It/sec {r.IterationsPerSecond:F3}, Tokens/sec {r.TokensPerSecond:F3}, Trained Tokens {r.TrainedTokens}, Peak mem {r.PeakMemoryBytes / 1e9:F3} GB"));
    }

    /// <summary>
    /// With the products on GPUs the gradients are summed by NCCL (staged through each rank's GPU) unless
    /// GRANARY_BACKEND (`granary launch --backend`) names a backend; null keeps the environment's choice.
    /// </summary>
    private static string? CollectiveBackendFor(TrainingDevice device) =>
        device == TrainingDevice.Cuda && Environment.GetEnvironmentVariable(DistributedEnvironment.Backend) is null or "" or "auto" ? "nccl" : null;

    private static FineTuneOptions FineTuneOptionsFrom(CommandArguments arguments)
    {
        var type = arguments.Get("--fine-tune-type") ?? "lora";
        var backend = arguments.Get("--backend") ?? "cpu";
        var rank = arguments.GetInt("--rank", 8);
        if (arguments.Get("--alpha") is not null && arguments.Get("--scale") is not null)
        {
            throw new UsageException("give --scale (mlx_lm) or --alpha (peft: scale = alpha / rank), not both.");
        }

        var options = new FineTuneOptions
        {
            Type = type switch
            {
                "lora" => FineTuneType.Lora,
                "dora" => FineTuneType.Dora,
                "full" => FineTuneType.Full,
                _ => throw new UsageException($"--fine-tune-type must be lora, dora or full, not '{type}'."),
            },
            GradientCheckpointing = arguments.Has("--grad-checkpoint"),
            Seed = arguments.GetInt("--seed", 0),
            Threads = arguments.GetInt("--threads", 0),  // ranks launched on one host divide its cores: --threads N each
            Device = backend.ToLowerInvariant() switch
            {
                "cpu" => TrainingDevice.Cpu,
                "cuda" => TrainingDevice.Cuda,
                _ => throw new UsageException($"--backend must be cpu or cuda, not '{backend}'."),
            },
            Lora = new LoraOptions
            {
                Rank = rank,
                Scale = arguments.Get("--alpha") is not null ? LoraOptions.FromAlpha(arguments.GetFloat("--alpha", 16), rank) : arguments.GetFloat("--scale", 20),
                Dropout = arguments.GetFloat("--dropout", 0),
                LayerCount = arguments.GetInt("--num-layers", 16),
                Keys = arguments.Get("--keys") is { } keys ? keys.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : LoraOptions.DefaultKeys,
            },
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }

        return options;
    }

    private static TrainerOptions TrainerOptionsFrom(CommandArguments arguments)
    {
        var options = new TrainerOptions
        {
            BatchSize = arguments.GetInt("--batch-size", 4),
            Iterations = arguments.GetInt("--iters", 1000),
            LearningRate = arguments.GetFloat("--learning-rate", 1e-5f),
            StepsPerReport = arguments.GetInt("--steps-per-report", 10),
            StepsPerEval = arguments.GetInt("--steps-per-eval", 200),
            ValidationBatches = arguments.GetInt("--val-batches", 25),
            SaveEvery = arguments.GetInt("--save-every", 100),
            AdapterPath = arguments.Get("--adapter-path") ?? "adapters",
            Resume = arguments.Has("--resume"),
            MaskPrompt = arguments.Has("--mask-prompt"),
            MaxSequenceLength = arguments.GetInt("--max-seq-length", 2048),
            Optimizer = arguments.Get("--optimizer") ?? "adamw",
            WeightDecay = arguments.GetFloat("--weight-decay", 0.01f),
            Momentum = arguments.GetFloat("--momentum", 0),
            WarmupSteps = arguments.GetInt("--warmup", 0),
            CosineDecay = arguments.Has("--cosine-decay"),
            FinalLearningRate = arguments.GetFloat("--min-learning-rate", 0),
            GradientAccumulationSteps = arguments.GetInt("--grad-accumulation-steps", 1),
            MaxGradientNorm = arguments.Get("--max-grad-norm") is { } norm ? double.Parse(norm, CultureInfo.InvariantCulture) : null,
            Seed = arguments.GetInt("--seed", 0),
        };
        try
        {
            options.Validate();
        }
        catch (ArgumentException e)
        {
            throw new UsageException(e.Message);
        }

        return options;
    }
}
