namespace Granary.Bench;

internal static class Program
{
    private static int Main(string[] args)
    {
        switch (args.FirstOrDefault())
        {
            case "decode":
                return DecodeBenchmark.Run(args[1..]);
            case "kernels":
                return KernelsBenchmark.Run(args[1..]);
            case "cuda":
                return CudaBenchmark.Run(args[1..]);
            case "cuda-tp":
                return CudaBenchmark.RunTensorParallel(args[1..]);
            case "collectives":
                return CollectivesBench.Run(args[1..]);
            case "training":
                return TrainingBenchmark.Run(args[1..]);
            case "distributed":
                return DistributedBenchmark.Run(args[1..]);
            case "gateway":
                return GatewayBenchmark.Run(args[1..]);
            case "batching":
                return BatchingBenchmark.Run(args[1..]);
            default:
                Console.Error.WriteLine("usage: Granary.Bench decode [--layers 28] [--prompt 128] [--tokens 32] [--formats bf16,q4] [--runs 5] [--profile] | kernels [threads] | cuda [--models qwen3-0.6b,qwen3-8b] [--batches 1,8] [--prompt 512] [--steps 64] | cuda-tp (same options; one process per GPU) | collectives [options] | distributed [--ranks 2,4] [--modes tensor,pipeline] [--tokens 16] [--backend shm] [--model DIR] | batching [--clients 1,4,16] [--tokens 32] [--prompt 32] [--backend cpu] [--model DIR] | gateway [--clients 1,4,16,64] [--seconds 10] [--max-tokens 32] [--model builtin] [--threads N] [--silos 1] [--layout tensor|pipeline]");
                return 2;
        }
    }
}
