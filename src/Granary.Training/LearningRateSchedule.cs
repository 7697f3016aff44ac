namespace Granary.Training;

/// <summary>Linear warm-up from <see cref="WarmupInitial"/> to the peak, then cosine decay to <see cref="Final"/>.</summary>
public sealed class LearningRateSchedule
{
    public LearningRateSchedule(float peak, int warmupSteps = 0, int decaySteps = 0, float final = 0, float warmupInitial = 0)
    {
        if (!(peak > 0) || warmupSteps < 0 || decaySteps < 0 || final < 0 || warmupInitial < 0)
        {
            throw new ArgumentOutOfRangeException(nameof(peak), "Learning rates must be positive and step counts non-negative.");
        }

        Peak = peak;
        WarmupSteps = warmupSteps;
        DecaySteps = decaySteps;
        Final = final;
        WarmupInitial = warmupInitial;
    }

    public float Peak { get; }

    public int WarmupSteps { get; }

    /// <summary>Steps of cosine decay after warm-up; 0 keeps the peak rate.</summary>
    public int DecaySteps { get; }

    public float Final { get; }

    public float WarmupInitial { get; }

    /// <summary>The rate of update number <paramref name="step"/> (0-based).</summary>
    public float At(long step)
    {
        if (step < WarmupSteps)
        {
            return WarmupInitial + ((Peak - WarmupInitial) * step / WarmupSteps);
        }

        if (DecaySteps == 0)
        {
            return Peak;
        }

        var progress = Math.Min(1.0, (double)(step - WarmupSteps) / DecaySteps);
        return (float)(Final + ((Peak - Final) * 0.5 * (1 + Math.Cos(Math.PI * progress))));
    }
}
