namespace Granary.Abstractions;

/// <summary>
/// A cluster model reference names a model as the silos see it ("builtin", a folder under their model directory or
/// a path on them); "{model}@adapters={path}" names that model with the LoRA/DoRA adapters in the folder
/// <c>path</c> (resolved on the silos like the model) merged into its weights.
/// </summary>
public static class ModelReferences
{
    public const string AdapterSeparator = "@adapters=";

    /// <summary>The reference of <paramref name="model"/> with the adapters in <paramref name="adapterPath"/>.</summary>
    public static string WithAdapters(string model, string adapterPath)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(model);
        ArgumentException.ThrowIfNullOrWhiteSpace(adapterPath);
        if (model.Contains(AdapterSeparator, StringComparison.Ordinal) || adapterPath.Contains(AdapterSeparator, StringComparison.Ordinal))
        {
            throw new ArgumentException($"A model reference carries one adapter folder: '{model}' with '{adapterPath}' would name two.", nameof(adapterPath));
        }

        return model + AdapterSeparator + adapterPath;
    }

    /// <summary>The model and the adapter folder (null when none) a reference names.</summary>
    public static (string Model, string? AdapterPath) Parse(string reference)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(reference);
        var at = reference.IndexOf(AdapterSeparator, StringComparison.Ordinal);
        if (at < 0)
        {
            return (reference, null);
        }

        var model = reference[..at];
        var adapters = reference[(at + AdapterSeparator.Length)..];
        if (string.IsNullOrWhiteSpace(model) || string.IsNullOrWhiteSpace(adapters) || adapters.Contains(AdapterSeparator, StringComparison.Ordinal))
        {
            throw new ArgumentException($"Model reference '{reference}' is not MODEL{AdapterSeparator}ADAPTER_FOLDER.", nameof(reference));
        }

        return (model, adapters);
    }
}
