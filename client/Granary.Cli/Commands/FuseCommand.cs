using Granary.Models.BuiltIn;
using Granary.Training;

namespace Granary.Cli.Commands;

/// <summary>`granary fuse`: merges trained adapters into the base weights and writes a new model folder.</summary>
internal static class FuseCommand
{
    public const string Summary = "merge adapters into a model: --model DIR --adapter-path DIR --save-path DIR";

    public static Task<int> RunAsync(string[] args)
    {
        var arguments = CommandArguments.Parse(args, ["--model", "--adapter-path", "--save-path"], []);
        var model = arguments.Get("--model") ?? BuiltInModel.EnsureCreated(Console.Error);
        var adapters = arguments.Get("--adapter-path") ?? "adapters";
        var output = arguments.Get("--save-path") ?? "fused_model";
        ModelFusion.Fuse(model, adapters, output);
        Console.WriteLine($"Fused {adapters} into {model}; wrote {output}.");
        return Task.FromResult(0);
    }
}
