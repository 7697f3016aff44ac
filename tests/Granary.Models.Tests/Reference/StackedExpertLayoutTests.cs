using System.Text.RegularExpressions;
using Granary.Models.Safetensors;
using Granary.Tensors.Cpu;

namespace Granary.Models.Tests.Reference;

/// <summary>
/// mlx-lm stores MoE experts stacked ("mlp.switch_mlp.{proj}.weight" [experts, out, in]) rather than one tensor per
/// expert. The dense reference MoE models rewritten that way must still give transformers' logits.
/// </summary>
public sealed partial class StackedExpertLayoutTests : IDisposable
{
    private readonly CpuBackend _backend = new(threads: 1);
    private readonly TestDirectory _directory = new();

    public void Dispose()
    {
        _backend.Dispose();
        _directory.Dispose();
    }

    [Theory]
    [InlineData("qwen3_moe")]
    [InlineData("qwen3_moe_bf16")]
    public void StackedDenseExpertsMatchTransformers(string name)
    {
        var reference = ReferenceModel.Load(name);
        File.Copy(Path.Combine(reference.Directory, "config.json"), _directory.File("config.json"));
        using (var source = SafetensorsFile.Open(Path.Combine(reference.Directory, "model.safetensors")))
        {
            WriteWithStackedExperts(source, _directory.File("model.safetensors"));
        }

        using var loaded = ModelLoader.Load(_directory.Path, _backend);
        using var cache = loaded.Model.CreateCache(reference.PromptIds.Length);
        var logits = loaded.Model.ForwardAllPositions(reference.PromptIds, cache);

        var vocabulary = loaded.Model.Config.VocabularySize;
        for (var row = 0; row < reference.Logits.Length; row++)
        {
            for (var id = 0; id < vocabulary; id++)
            {
                Assert.True(
                    Math.Abs(reference.Logits[row][id] - logits[(row * vocabulary) + id]) < 1e-3f,
                    $"position {row}, id {id}: expected {reference.Logits[row][id]}, got {logits[(row * vocabulary) + id]}");
            }
        }
    }

    private static void WriteWithStackedExperts(SafetensorsFile source, string path)
    {
        var writer = new SafetensorsWriter();
        var stacked = new SortedDictionary<string, SortedDictionary<int, string>>(StringComparer.Ordinal);
        foreach (var name in source.Tensors.Keys)
        {
            var match = ExpertTensor().Match(name);
            if (match.Success)
            {
                var key = $"{match.Groups["prefix"].Value}switch_mlp.{match.Groups["proj"].Value}.weight";
                if (!stacked.TryGetValue(key, out var experts))
                {
                    stacked[key] = experts = [];
                }

                experts[int.Parse(match.Groups["expert"].Value)] = name;
            }
            else
            {
                var info = source.Tensors[name];
                writer.Add(name, info.DType, info.Shape.ToArray(), source.GetBytes(name));
            }
        }

        Assert.NotEmpty(stacked);
        foreach (var (key, experts) in stacked)
        {
            var first = source.Tensors[experts.Values.First()];
            var bytes = experts.Values.SelectMany(n => source.GetBytes(n).ToArray()).ToArray();
            writer.Add(key, first.DType, [experts.Count, .. first.Shape], bytes);
        }

        writer.Save(path);
    }

    [GeneratedRegex(@"^(?<prefix>model\.layers\.\d+\.mlp\.)experts\.(?<expert>\d+)\.(?<proj>gate_proj|up_proj|down_proj)\.weight$")]
    private static partial Regex ExpertTensor();
}
