using System.Diagnostics;
using System.Runtime.InteropServices;
using Granary.Collectives;
using Granary.Tensors;

namespace Granary.Cli.Commands;

/// <summary>
/// `granary collectives-check`: run by every rank under `granary launch` (and by `granary config`), it forms the group
/// from the environment, all-sums a known pattern and compares it with the sum computed locally.
/// </summary>
internal static class CollectivesCheckCommand
{
    public const string Summary = "(run under launch) verify the group with an all-sum against a local reference";

    /// <summary>Exit code of a rank told to fail on purpose by --exit-rank.</summary>
    public const int DeliberateFailureExitCode = 3;

    private static readonly string[] ValueOptions = ["--elements", "--dtype", "--iterations", "--backend", "--exit-rank"];

    public static Task<int> RunAsync(string[] args)
    {
        var parsed = CommandArguments.Parse(args, ValueOptions, []);
        var elements = parsed.GetInt("--elements", 4099);
        var iterations = parsed.GetInt("--iterations", 2);
        var exitRank = parsed.GetInt("--exit-rank", -1);
        var dtype = (parsed.Get("--dtype") ?? "f32").ToLowerInvariant() switch
        {
            "f32" => DType.F32,
            "f16" => DType.F16,
            "bf16" => DType.BF16,
            "i32" => DType.I32,
            var other => throw new UsageException($"--dtype must be f32, f16, bf16 or i32, got '{other}'."),
        };

        Group group;
        try
        {
            group = Group.Init(strict: true, backend: parsed.Get("--backend"));
        }
        catch (Exception e) when (e is CollectiveException or ArgumentException or FormatException)
        {
            Console.Error.WriteLine($"collectives check: cannot form the group: {e.Message}");
            return Task.FromResult(1);
        }

        using (group)
        {
            var buffer = new byte[elements * dtype.SizeInBytes()];
            try
            {
                for (var iteration = 0; iteration < iterations; iteration++)
                {
                    if (group.Rank == exitRank && iteration == 1)
                    {
                        Console.WriteLine($"rank {group.Rank}: exiting on purpose (--exit-rank).");
                        Console.Out.Flush();
                        Environment.Exit(DeliberateFailureExitCode);
                    }

                    Fill(buffer, dtype, group.Rank, iteration);
                    var watch = Stopwatch.StartNew();
                    group.AllReduce(buffer, dtype, ReduceOp.Sum);
                    var elapsed = watch.Elapsed;
                    if (FirstMismatch(buffer, dtype, group.Size, iteration) is { } bad)
                    {
                        Console.Error.WriteLine($"rank {group.Rank}: all-sum element {bad} differs from the reference.");
                        return Task.FromResult(1);
                    }

                    Console.WriteLine(
                        $"rank {group.Rank} of {group.Size}: all-sum of {elements} {dtype} over {group.Backend} matches the reference ({elapsed.TotalMilliseconds:0.###} ms).");
                }

                group.Barrier();
            }
            catch (CollectiveException e)
            {
                Console.Error.WriteLine($"rank {group.Rank}: collectives check failed: {e.Message}");
                return Task.FromResult(1);
            }
        }

        return Task.FromResult(0);
    }

    /// <summary>Small integers, so sums are exact in every dtype and the comparison is bit for bit.</summary>
    private static int Value(int rank, int index, int iteration) => (((rank + 1) * 37) + (index * 11) + (index / 7) + iteration) % 41 - 20;

    private static void Fill(byte[] buffer, DType dtype, int rank, int iteration)
    {
        var count = buffer.Length / dtype.SizeInBytes();
        for (var i = 0; i < count; i++)
        {
            Set(buffer, dtype, i, Value(rank, i, iteration));
        }
    }

    private static int? FirstMismatch(byte[] buffer, DType dtype, int size, int iteration)
    {
        var count = buffer.Length / dtype.SizeInBytes();
        for (var i = 0; i < count; i++)
        {
            var reference = 0;
            for (var r = 0; r < size; r++)
            {
                reference += Value(r, i, iteration);
            }

            if (Get(buffer, dtype, i) != reference)
            {
                return i;
            }
        }

        return null;
    }

    private static void Set(byte[] buffer, DType dtype, int index, int value)
    {
        switch (dtype)
        {
            case DType.F32: MemoryMarshal.Cast<byte, float>(buffer.AsSpan())[index] = value; break;
            case DType.I32: MemoryMarshal.Cast<byte, int>(buffer.AsSpan())[index] = value; break;
            case DType.F16: MemoryMarshal.Cast<byte, Half>(buffer.AsSpan())[index] = (Half)value; break;
            default: MemoryMarshal.Cast<byte, ushort>(buffer.AsSpan())[index] = (ushort)(BitConverter.SingleToUInt32Bits(value) >> 16); break;
        }
    }

    private static float Get(byte[] buffer, DType dtype, int index) => dtype switch
    {
        DType.F32 => MemoryMarshal.Cast<byte, float>(buffer)[index],
        DType.I32 => MemoryMarshal.Cast<byte, int>(buffer)[index],
        DType.F16 => (float)MemoryMarshal.Cast<byte, Half>(buffer)[index],
        _ => BitConverter.UInt32BitsToSingle((uint)MemoryMarshal.Cast<byte, ushort>(buffer)[index] << 16),
    };
}
