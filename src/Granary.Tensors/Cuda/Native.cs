using System.Runtime.InteropServices;

namespace Granary.Tensors.Cuda;

/// <summary>The CUDA driver API entry points this backend uses (CUresult 0 = success).</summary>
internal static unsafe class Driver
{
    public const int CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75;
    public const int CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76;
    public const int CU_STREAM_NON_BLOCKING = 1;
    public const int CU_STREAM_CAPTURE_MODE_THREAD_LOCAL = 1;
    public const int CU_MEMPOOL_ATTR_RELEASE_THRESHOLD = 4;
    public const int CU_EVENT_DISABLE_TIMING = 2;
    public const int CUDA_ERROR_NOT_READY = 600;

    private const string Lib = CudaLibraries.Driver;

    [DllImport(Lib)] public static extern int cuInit(uint flags);
    [DllImport(Lib)] public static extern int cuDeviceGetCount(int* count);
    [DllImport(Lib)] public static extern int cuDeviceGet(int* device, int ordinal);
    [DllImport(Lib)] public static extern int cuDeviceGetName(byte* name, int length, int device);
    [DllImport(Lib)] public static extern int cuDeviceGetAttribute(int* value, int attribute, int device);
    [DllImport(Lib)] public static extern int cuDevicePrimaryCtxRetain(IntPtr* context, int device);
    [DllImport(Lib)] public static extern int cuDevicePrimaryCtxRelease_v2(int device);
    [DllImport(Lib)] public static extern int cuDeviceGetDefaultMemPool(IntPtr* pool, int device);
    [DllImport(Lib)] public static extern int cuMemPoolSetAttribute(IntPtr pool, int attribute, void* value);
    [DllImport(Lib)] public static extern int cuCtxSetCurrent(IntPtr context);
    [DllImport(Lib)] public static extern int cuMemGetInfo_v2(nuint* free, nuint* total);
    [DllImport(Lib)] public static extern int cuMemAllocAsync(ulong* pointer, nuint bytes, IntPtr stream);
    [DllImport(Lib)] public static extern int cuMemFreeAsync(ulong pointer, IntPtr stream);
    [DllImport(Lib)] public static extern int cuMemsetD8Async(ulong pointer, byte value, nuint count, IntPtr stream);
    [DllImport(Lib)] public static extern int cuMemcpyHtoDAsync_v2(ulong destination, void* source, nuint bytes, IntPtr stream);
    [DllImport(Lib)] public static extern int cuMemcpyDtoHAsync_v2(void* destination, ulong source, nuint bytes, IntPtr stream);
    [DllImport(Lib)] public static extern int cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [DllImport(Lib)] public static extern int cuStreamCreate(IntPtr* stream, uint flags);
    [DllImport(Lib)] public static extern int cuStreamDestroy_v2(IntPtr stream);
    [DllImport(Lib)] public static extern int cuStreamSynchronize(IntPtr stream);
    [DllImport(Lib)] public static extern int cuStreamQuery(IntPtr stream);
    [DllImport(Lib)] public static extern int cuStreamWaitEvent(IntPtr stream, IntPtr @event, uint flags);
    [DllImport(Lib)] public static extern int cuEventCreate(IntPtr* @event, uint flags);
    [DllImport(Lib)] public static extern int cuEventRecord(IntPtr @event, IntPtr stream);
    [DllImport(Lib)] public static extern int cuEventDestroy_v2(IntPtr @event);
    [DllImport(Lib)] public static extern int cuStreamBeginCapture_v2(IntPtr stream, int mode);
    [DllImport(Lib)] public static extern int cuStreamEndCapture(IntPtr stream, IntPtr* graph);
    [DllImport(Lib)] public static extern int cuGraphInstantiateWithFlags(IntPtr* graphExec, IntPtr graph, ulong flags);
    [DllImport(Lib)] public static extern int cuGraphLaunch(IntPtr graphExec, IntPtr stream);
    [DllImport(Lib)] public static extern int cuGraphExecDestroy(IntPtr graphExec);
    [DllImport(Lib)] public static extern int cuGraphDestroy(IntPtr graph);
    [DllImport(Lib)] public static extern int cuModuleLoadData(IntPtr* module, void* image);
    [DllImport(Lib)] public static extern int cuModuleUnload(IntPtr module);
    [DllImport(Lib)] public static extern int cuModuleGetFunction(IntPtr* function, IntPtr module, byte* name);

    [DllImport(Lib)]
    public static extern int cuLaunchKernel(
        IntPtr function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedBytes, IntPtr stream, void** parameters, void** extra);

    [DllImport(Lib)] public static extern int cuGetErrorName(int error, byte** name);
    [DllImport(Lib)] public static extern int cuGetErrorString(int error, byte** text);

    public static void Check(int result, string call)
    {
        if (result != 0)
        {
            byte* name = null;
            byte* text = null;
            _ = cuGetErrorName(result, &name);
            _ = cuGetErrorString(result, &text);
            throw new CudaException(
                $"{call} failed: {Marshal.PtrToStringUTF8((IntPtr)name) ?? result.ToString(System.Globalization.CultureInfo.InvariantCulture)} ({Marshal.PtrToStringUTF8((IntPtr)text)}).");
        }
    }
}

/// <summary>NVRTC: CUDA C++ compiled to a cubin at run time.</summary>
internal static unsafe class Nvrtc
{
    private const string Lib = CudaLibraries.Nvrtc;

    [DllImport(Lib)] public static extern int nvrtcCreateProgram(IntPtr* program, byte* source, byte* name, int headers, byte** headerSources, byte** headerNames);
    [DllImport(Lib)] public static extern int nvrtcCompileProgram(IntPtr program, int optionCount, byte** options);
    [DllImport(Lib)] public static extern int nvrtcGetProgramLogSize(IntPtr program, nuint* size);
    [DllImport(Lib)] public static extern int nvrtcGetProgramLog(IntPtr program, byte* log);
    [DllImport(Lib)] public static extern int nvrtcGetCUBINSize(IntPtr program, nuint* size);
    [DllImport(Lib)] public static extern int nvrtcGetCUBIN(IntPtr program, byte* cubin);
    [DllImport(Lib)] public static extern int nvrtcDestroyProgram(IntPtr* program);
    [DllImport(Lib)] public static extern IntPtr nvrtcGetErrorString(int result);

    public static void Check(int result, string call)
    {
        if (result != 0)
        {
            throw new CudaException($"{call} failed: {Marshal.PtrToStringUTF8(nvrtcGetErrorString(result))}.");
        }
    }
}

/// <summary>cuBLASLt: the GEMMs of prefill (tensor cores, f32 accumulation) and the plain-f32 products of training.</summary>
internal static unsafe class CublasLt
{
    public const int CUDA_R_32F = 0;
    public const int CUDA_R_16F = 2;
    public const int CUDA_R_16BF = 14;
    public const int CUBLAS_COMPUTE_32F = 68;
    public const int CUBLAS_OP_N = 0;
    public const int CUBLAS_OP_T = 1;
    public const int CUBLASLT_MATMUL_DESC_TRANSA = 3;
    public const int CUBLASLT_MATMUL_DESC_TRANSB = 4;
    public const int CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES = 1;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES = 5;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES = 6;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES = 7;
    public const int CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES = 8;

    private const string Lib = CudaLibraries.CublasLt;

    [DllImport(Lib)] public static extern int cublasLtCreate(IntPtr* handle);
    [DllImport(Lib)] public static extern int cublasLtDestroy(IntPtr handle);
    [DllImport(Lib)] public static extern int cublasLtMatmulDescCreate(IntPtr* description, int computeType, int scaleType);
    [DllImport(Lib)] public static extern int cublasLtMatmulDescDestroy(IntPtr description);
    [DllImport(Lib)] public static extern int cublasLtMatmulDescSetAttribute(IntPtr description, int attribute, void* value, nuint size);
    [DllImport(Lib)] public static extern int cublasLtMatrixLayoutCreate(IntPtr* layout, int type, ulong rows, ulong columns, long leadingDimension);
    [DllImport(Lib)] public static extern int cublasLtMatrixLayoutDestroy(IntPtr layout);
    [DllImport(Lib)] public static extern int cublasLtMatmulPreferenceCreate(IntPtr* preference);
    [DllImport(Lib)] public static extern int cublasLtMatmulPreferenceDestroy(IntPtr preference);
    [DllImport(Lib)] public static extern int cublasLtMatmulPreferenceSetAttribute(IntPtr preference, int attribute, void* value, nuint size);

    [DllImport(Lib)]
    public static extern int cublasLtMatmulAlgoGetHeuristic(
        IntPtr handle, IntPtr operation, IntPtr a, IntPtr b, IntPtr c, IntPtr d, IntPtr preference, int requested, HeuristicResult* results, int* returned);

    [DllImport(Lib)]
    public static extern int cublasLtMatmul(
        IntPtr handle, IntPtr operation, void* alpha, ulong a, IntPtr aLayout, ulong b, IntPtr bLayout, void* beta,
        ulong c, IntPtr cLayout, ulong d, IntPtr dLayout, void* algorithm, ulong workspace, nuint workspaceBytes, IntPtr stream);

    public static void Check(int status, string call)
    {
        if (status != 0)
        {
            throw new CudaException($"{call} failed with cublasStatus_t {status}.");
        }
    }

    /// <summary>cublasLtMatmulHeuristicResult_t: the 64-byte algorithm, workspace size, state, waves, 4 reserved ints.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct HeuristicResult
    {
        public fixed ulong Algorithm[8];
        public nuint WorkspaceSize;
        public int State;
        public float WavesCount;
        public fixed int Reserved[4];
    }
}
