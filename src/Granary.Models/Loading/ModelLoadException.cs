namespace Granary.Models;

/// <summary>
/// A checkpoint or configuration file that is malformed or asks for something this runtime does not support.
/// The message always names the file and, where there is one, the field or tensor at fault.
/// </summary>
public sealed class ModelLoadException : Exception
{
    public ModelLoadException(string filePath, string? item, string message, Exception? innerException = null)
        : base(item is null ? $"{filePath}: {message}" : $"{filePath}: '{item}': {message}", innerException)
    {
        FilePath = filePath;
        Item = item;
    }

    /// <summary>The file at fault.</summary>
    public string FilePath { get; }

    /// <summary>The field or tensor at fault, when the problem is narrower than the whole file.</summary>
    public string? Item { get; }
}
