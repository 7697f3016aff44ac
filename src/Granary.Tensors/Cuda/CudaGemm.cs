using System.Numerics;

namespace Granary.Tensors.Cuda;

/// <summary>
/// y [n, out] (f32) = x [n, in] * W [out, in]^T through cuBLASLt with f32 accumulation: W and x both f32, or both
/// bf16 / f16. Descriptors and the chosen algorithm are cached per shape, type and pointer alignment.
/// </summary>
internal sealed unsafe class CudaGemm : IDisposable
{
    private const long WorkspaceBytes = 32L << 20;

    private readonly IntPtr _handle;
    private readonly ulong _workspace;
    private readonly Action<ulong> _free;
    private readonly Dictionary<Key, Plan> _plans = [];

    public CudaGemm(Func<long, ulong> allocate, Action<ulong> free)
    {
        IntPtr handle;
        CublasLt.Check(CublasLt.cublasLtCreate(&handle), "cublasLtCreate");
        _handle = handle;
        _free = free;
        _workspace = allocate(WorkspaceBytes);
    }

    /// <param name="accumulate">true: y += x W^T (beta = 1); false: y = x W^T.</param>
    public void Run(ulong weight, ulong input, ulong output, int n, int inFeatures, int outFeatures, DType operandType, bool accumulate, IntPtr stream)
    {
        var key = new Key(n, inFeatures, outFeatures, operandType, Alignment(weight), Alignment(input), Alignment(output));
        if (!_plans.TryGetValue(key, out var plan))
        {
            plan = CreatePlan(key);
            _plans[key] = plan;
        }

        var alpha = 1f;
        var beta = accumulate ? 1f : 0f;
        var heuristic = plan.Heuristic;
        CublasLt.Check(
            CublasLt.cublasLtMatmul(
                _handle, plan.Operation, &alpha, weight, plan.A, input, plan.B, &beta, output, plan.D, output, plan.D,
                &heuristic, _workspace, (nuint)WorkspaceBytes, stream),
            "cublasLtMatmul");
    }

    public void Dispose()
    {
        foreach (var plan in _plans.Values)
        {
            _ = CublasLt.cublasLtMatrixLayoutDestroy(plan.A);
            _ = CublasLt.cublasLtMatrixLayoutDestroy(plan.B);
            _ = CublasLt.cublasLtMatrixLayoutDestroy(plan.D);
            _ = CublasLt.cublasLtMatmulDescDestroy(plan.Operation);
        }

        _plans.Clear();
        _free(_workspace);
        _ = CublasLt.cublasLtDestroy(_handle);
    }

    private static int Alignment(ulong pointer) => pointer == 0 ? 256 : (int)Math.Min(256UL, 1UL << BitOperations.TrailingZeroCount(pointer));

    private Plan CreatePlan(Key key)
    {
        var type = key.OperandType switch
        {
            DType.F32 => CublasLt.CUDA_R_32F,
            DType.BF16 => CublasLt.CUDA_R_16BF,
            DType.F16 => CublasLt.CUDA_R_16F,
            _ => throw new ArgumentException($"No GEMM for {key.OperandType} operands."),
        };

        // Column-major view: D (out x n, ld out) = op(A) B with A the row-major weight seen as (in x out) and transposed.
        IntPtr operation, a, b, d, preference;
        CublasLt.Check(CublasLt.cublasLtMatmulDescCreate(&operation, CublasLt.CUBLAS_COMPUTE_32F, CublasLt.CUDA_R_32F), "cublasLtMatmulDescCreate");
        var transpose = CublasLt.CUBLAS_OP_T;
        var none = CublasLt.CUBLAS_OP_N;
        CublasLt.Check(CublasLt.cublasLtMatmulDescSetAttribute(operation, CublasLt.CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(int)), "TRANSA");
        CublasLt.Check(CublasLt.cublasLtMatmulDescSetAttribute(operation, CublasLt.CUBLASLT_MATMUL_DESC_TRANSB, &none, sizeof(int)), "TRANSB");
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&a, type, (ulong)key.In, (ulong)key.Out, key.In), "layout A");
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&b, type, (ulong)key.In, (ulong)key.N, key.In), "layout B");
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&d, CublasLt.CUDA_R_32F, (ulong)key.Out, (ulong)key.N, key.Out), "layout D");
        CublasLt.Check(CublasLt.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
        try
        {
            var workspace = (ulong)WorkspaceBytes;
            CublasLt.Check(
                CublasLt.cublasLtMatmulPreferenceSetAttribute(preference, CublasLt.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(ulong)),
                "MAX_WORKSPACE_BYTES");
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.AlignA);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.AlignB);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.AlignD);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.AlignD);
            CublasLt.HeuristicResult result;
            int returned;
            CublasLt.Check(
                CublasLt.cublasLtMatmulAlgoGetHeuristic(_handle, operation, a, b, d, d, preference, 1, &result, &returned),
                "cublasLtMatmulAlgoGetHeuristic");
            if (returned == 0)
            {
                throw new CudaException($"cuBLASLt has no algorithm for a {key.OperandType} GEMM of [{key.N}, {key.In}] x [{key.Out}, {key.In}]^T.");
            }

            return new Plan(operation, a, b, d, result);
        }
        finally
        {
            _ = CublasLt.cublasLtMatmulPreferenceDestroy(preference);
        }
    }

    private static void SetAlignment(IntPtr preference, int attribute, int bytes)
    {
        var value = (uint)bytes;
        CublasLt.Check(CublasLt.cublasLtMatmulPreferenceSetAttribute(preference, attribute, &value, sizeof(uint)), "MIN_ALIGNMENT");
    }

    private readonly record struct Key(int N, int In, int Out, DType OperandType, int AlignA, int AlignB, int AlignD);

    // The heuristic result starts with the cublasLtMatmulAlgo_t that cublasLtMatmul takes.
    private sealed record Plan(IntPtr Operation, IntPtr A, IntPtr B, IntPtr D, CublasLt.HeuristicResult Heuristic);
}
