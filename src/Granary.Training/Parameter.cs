namespace Granary.Training;

/// <summary>A named f32 tensor of a training model; <see cref="Gradient"/> exists only when it is trained.</summary>
public sealed class Parameter
{
    public Parameter(string name, float[] value, int[] shape, bool trainable)
    {
        if (Tensors.Tensor.ShapeElementCount(shape) != value.Length)
        {
            throw new ArgumentException($"{name}: {value.Length} values do not fill shape [{string.Join(", ", shape)}].");
        }

        Name = name;
        Value = value;
        Shape = shape;
        Gradient = trainable ? new float[value.Length] : null;
    }

    /// <summary>The Hugging Face tensor name (adapters: the module path plus ".lora_a" / ".lora_b").</summary>
    public string Name { get; }

    public float[] Value { get; }

    public int[] Shape { get; }

    public float[]? Gradient { get; }

    public bool Trainable => Gradient is not null;

    public override string ToString() => $"{Name} [{string.Join(", ", Shape)}]{(Trainable ? " trainable" : "")}";
}
