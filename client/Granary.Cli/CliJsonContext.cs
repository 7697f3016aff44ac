using System.Text.Json.Serialization;
using Granary.Cli.Commands;

namespace Granary.Cli;

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(GenerateResult))]
internal sealed partial class CliJsonContext : JsonSerializerContext;
