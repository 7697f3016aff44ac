using System.Numerics;

namespace Granary.Tensors.Cuda;

/// <summary>
/// y [n, out] (f32) = x [n, in] * W [out, in]^T through cuBLASLt with f32 accumulation: W and x both f32, or both
/// bf16 / f16; and general row-major products op(a) op(b) (<see cref="Multiply"/>). Descriptors and the chosen
/// algorithm are cached per shape, transposes, type and pointer alignment.
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
    public void Run(ulong weight, ulong input, ulong output, int n, int inFeatures, int outFeatures, DType operandType, bool accumulate, IntPtr stream) =>
        Multiply(input, transposeA: false, weight, transposeB: true, output, n, outFeatures, inFeatures, operandType, accumulate, stream);

    /// <summary>
    /// Row-major c [m, n] (f32) (+)= op(a) op(b): a is [m, k] ([k, m] when <paramref name="transposeA"/>), b is [k, n]
    /// ([n, k] when <paramref name="transposeB"/>).
    /// </summary>
    public void Multiply(ulong a, bool transposeA, ulong b, bool transposeB, ulong c, int m, int n, int k, DType operandType, bool accumulate, IntPtr stream)
    {
        // cuBLASLt is column-major, where a row-major matrix reads as its transpose: c^T = op(b)^T op(a)^T, so b is
        // cuBLASLt's first operand and a its second.
        var key = new Key(m, n, k, transposeA, transposeB, operandType, Alignment(b), Alignment(a), Alignment(c));
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
                _handle, plan.Operation, &alpha, b, plan.First, a, plan.Second, &beta, c, plan.D, c, plan.D,
                &heuristic, _workspace, (nuint)WorkspaceBytes, stream),
            "cublasLtMatmul");
    }

    public void Dispose()
    {
        foreach (var plan in _plans.Values)
        {
            _ = CublasLt.cublasLtMatrixLayoutDestroy(plan.First);
            _ = CublasLt.cublasLtMatrixLayoutDestroy(plan.Second);
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

        // Column-major views (leading dimension = rows): b [k, n] is (n x k), or (k x n) taken transposed; a [m, k] is
        // (k x m), or (m x k) taken transposed; D = c^T is (n x m).
        IntPtr operation, first, second, d, preference;
        CublasLt.Check(CublasLt.cublasLtMatmulDescCreate(&operation, CublasLt.CUBLAS_COMPUTE_32F, CublasLt.CUDA_R_32F), "cublasLtMatmulDescCreate");
        var transposeFirst = key.TransposeB ? CublasLt.CUBLAS_OP_T : CublasLt.CUBLAS_OP_N;
        var transposeSecond = key.TransposeA ? CublasLt.CUBLAS_OP_T : CublasLt.CUBLAS_OP_N;
        CublasLt.Check(CublasLt.cublasLtMatmulDescSetAttribute(operation, CublasLt.CUBLASLT_MATMUL_DESC_TRANSA, &transposeFirst, sizeof(int)), "TRANSA");
        CublasLt.Check(CublasLt.cublasLtMatmulDescSetAttribute(operation, CublasLt.CUBLASLT_MATMUL_DESC_TRANSB, &transposeSecond, sizeof(int)), "TRANSB");
        var (firstRows, firstColumns) = key.TransposeB ? (key.K, key.N) : (key.N, key.K);
        var (secondRows, secondColumns) = key.TransposeA ? (key.M, key.K) : (key.K, key.M);
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&first, type, (ulong)firstRows, (ulong)firstColumns, firstRows), "layout A");
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&second, type, (ulong)secondRows, (ulong)secondColumns, secondRows), "layout B");
        CublasLt.Check(CublasLt.cublasLtMatrixLayoutCreate(&d, CublasLt.CUDA_R_32F, (ulong)key.N, (ulong)key.M, key.N), "layout D");
        CublasLt.Check(CublasLt.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
        try
        {
            var workspace = (ulong)WorkspaceBytes;
            CublasLt.Check(
                CublasLt.cublasLtMatmulPreferenceSetAttribute(preference, CublasLt.CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace, sizeof(ulong)),
                "MAX_WORKSPACE_BYTES");
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, key.AlignFirst);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, key.AlignSecond);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, key.AlignD);
            SetAlignment(preference, CublasLt.CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, key.AlignD);
            CublasLt.HeuristicResult result;
            int returned;
            CublasLt.Check(
                CublasLt.cublasLtMatmulAlgoGetHeuristic(_handle, operation, first, second, d, d, preference, 1, &result, &returned),
                "cublasLtMatmulAlgoGetHeuristic");
            if (returned == 0)
            {
                throw new CudaException(
                    $"cuBLASLt has no algorithm for a {key.OperandType} GEMM [{key.M}, {key.N}] = a{(key.TransposeA ? "^T" : "")} b{(key.TransposeB ? "^T" : "")} over k = {key.K}.");
            }

            return new Plan(operation, first, second, d, result);
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

    private readonly record struct Key(int M, int N, int K, bool TransposeA, bool TransposeB, DType OperandType, int AlignFirst, int AlignSecond, int AlignD);

    // The heuristic result starts with the cublasLtMatmulAlgo_t that cublasLtMatmul takes.
    private sealed record Plan(IntPtr Operation, IntPtr First, IntPtr Second, IntPtr D, CublasLt.HeuristicResult Heuristic);
}
