using System.Runtime.InteropServices;
using Granary.Models;
using Granary.Models.Safetensors;
using Granary.Tensors;
using Granary.Tensors.Cpu;
using Granary.Tensors.Numerics;

namespace Granary.Training;

/// <summary>
/// `granary fuse`: writes a model folder whose weights include the trained adapters (W + scale * B A; DoRA: its rows
/// rescaled to the trained magnitudes m) or the fully fine-tuned weights. Dense weights keep their dtype; an MLX-quantized weight that changes is written dense in bf16
/// (its .scales/.biases dropped; the loader treats a layer as quantized only when .scales exists).
/// </summary>
public static class ModelFusion
{
    public static void Fuse(string modelDirectory, string adapterDirectory, string outputDirectory)
    {
        if (Path.GetFullPath(modelDirectory) == Path.GetFullPath(outputDirectory))
        {
            throw new ArgumentException("The fused model must go to a new folder, not over the base model.", nameof(outputDirectory));
        }

        using var backend = new CpuBackend();
        using var loaded = ModelLoader.Load(modelDirectory, backend);
        var model = TrainingModel.Create(loaded.Model, AdapterFiles.ReadOptions(adapterDirectory));
        AdapterFiles.Load(model, adapterDirectory);
        var replaced = FusedWeights(model);

        using var checkpoint = SafetensorsCheckpoint.Open(modelDirectory);
        var writer = new SafetensorsWriter();
        var dropped = replaced.Keys.SelectMany(n => new[] { Prefix(n) + ".scales", Prefix(n) + ".biases" }).ToHashSet(StringComparer.Ordinal);
        foreach (var name in checkpoint.TensorNames.Order(StringComparer.Ordinal))
        {
            if (dropped.Contains(name))
            {
                continue;
            }

            var (file, info) = checkpoint.GetTensor(name);
            if (replaced.Remove(name, out var values))
            {
                AddFloats(writer, name, info.DType, [.. info.Shape], values, path: $"{file.Path}:{name}");
            }
            else
            {
                writer.Add(name, info.DType, [.. info.Shape], file.GetBytes(name));
            }
        }

        if (replaced.Count > 0)
        {
            throw new InvalidDataException($"{modelDirectory}: trained weights without a tensor to replace: {string.Join(", ", replaced.Keys)}.");
        }

        Directory.CreateDirectory(outputDirectory);
        foreach (var source in Directory.EnumerateFiles(modelDirectory))
        {
            var fileName = Path.GetFileName(source);
            if (!fileName.EndsWith(".safetensors", StringComparison.Ordinal) && fileName != SafetensorsCheckpoint.IndexFileName)
            {
                File.Copy(source, Path.Combine(outputDirectory, fileName), overwrite: true);
            }
        }

        writer.Save(Path.Combine(outputDirectory, "model.safetensors"));
    }

    /// <summary>Tensor name -> new f32 values [out, in] for every weight the training changed.</summary>
    internal static unsafe Dictionary<string, float[]> FusedWeights(TrainingModel model)
    {
        var result = new Dictionary<string, float[]>(StringComparer.Ordinal);
        if (model.Options.Type == FineTuneType.Full)
        {
            foreach (var parameter in model.TrainableParameters)
            {
                result.TryAdd(parameter.Name == "lm_head.weight" && model.Config.TieWordEmbeddings ? "model.embed_tokens.weight" : parameter.Name, parameter.Value);
            }

            return result;
        }

        foreach (var linear in model.AdaptedLinears.Values)
        {
            var lora = linear.Lora!;
            var weight = new float[linear.OutFeatures * linear.InFeatures];
            using (var view = linear.OpenWeight())
            {
                new ReadOnlySpan<float>(view.Pointer, weight.Length).CopyTo(weight);
            }

            var scaledB = new float[lora.B.Value.Length];
            System.Numerics.Tensors.TensorPrimitives.Multiply(lora.B.Value, lora.Scale, scaledB);
            fixed (float* b = scaledB, a = lora.A.Value, w = weight)
            {
                MatrixMath.Multiply(b, a, w, linear.OutFeatures, linear.InFeatures, lora.Rank, accumulate: true);
            }

            if (lora.Magnitude is { } magnitude)
            {
                // DoRA: each row of W + scale B A rescaled to its trained magnitude.
                for (var o = 0; o < linear.OutFeatures; o++)
                {
                    var row = weight.AsSpan(o * linear.InFeatures, linear.InFeatures);
                    System.Numerics.Tensors.TensorPrimitives.Multiply(row, magnitude.Value[o] / System.Numerics.Tensors.TensorPrimitives.Norm(row), row);
                }
            }

            result.Add(linear.Name + ".weight", weight);
        }

        return result;
    }

    private static string Prefix(string weightName) => weightName[..^".weight".Length];

    private static void AddFloats(SafetensorsWriter writer, string name, DType dtype, int[] shape, float[] values, string path)
    {
        switch (dtype)
        {
            case DType.F32:
                writer.Add(name, values, shape);
                break;
            case DType.F16:
                var halves = new Half[values.Length];
                FloatConversion.SingleToHalf(values, halves);
                writer.Add(name, halves, shape);
                break;
            case DType.BF16:
            case DType.U32:
                // bf16 stays bf16; quantized codes (u32) become a dense bf16 weight [out, in].
                var raw = new ushort[values.Length];
                FloatConversion.SingleToBFloat16(values, raw);
                var outShape = dtype == DType.U32 ? new[] { shape[0], values.Length / shape[0] } : shape;
                writer.Add(name, DType.BF16, outShape, MemoryMarshal.AsBytes(raw.AsSpan()));
                break;
            default:
                throw new InvalidDataException($"{path}: cannot write trained values as {dtype}.");
        }
    }
}
