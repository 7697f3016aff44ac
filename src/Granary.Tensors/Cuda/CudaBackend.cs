using System.Runtime.CompilerServices;
using System.Text;

namespace Granary.Tensors.Cuda;

/// <summary>
/// Compute backend on one NVIDIA GPU through the CUDA driver API (primary context, one non-blocking stream).
/// Activations and KV caches are f32: weights stay in their checkpoint dtype (f32, f16, bf16, MLX 4/8-bit) and are
/// widened in registers, so results track the f32 CPU backend to rounding, while decode still streams only the
/// weight bytes. Kernels are CUDA C compiled at run time by NVRTC; prefill GEMMs run on tensor cores through cuBLASLt.
/// Every operation is queued on the stream: a step makes no host round trip; <see cref="Download"/> and
/// <see cref="Synchronize"/> wait. Memory comes from the stream-ordered pool, so allocating and freeing inside a step
/// do not stall either. Calls from several threads must be serialised by the caller (as models do per forward pass).
/// Beyond <see cref="IComputeBackend"/> it offers decode fusions (<see cref="AddRmsNorm"/>, <see cref="QkNormRopeAppend"/>,
/// <see cref="SwiGluLinear"/>, attention at a position in device memory; <see cref="IFusedDecodeBackend"/>) with which a
/// whole decode step is 9 kernels a layer and can be captured once as a graph replayed at every position.
/// </summary>
public sealed unsafe class CudaBackend : IFusedDecodeBackend
{
    /// <summary>Up to this many tokens a Linear is a GEMV that reads the weight once; beyond, a GEMM.</summary>
    public const int GemvMaxTokens = 8;

    private const int MaxHeadDim = 256;

    // Output rows per GEMV block, one warp each (GEMV_WARPS in linear.cu): small blocks spread narrow matrices over
    // every multiprocessor.
    private const int GemvRowsPerBlock = 4;
    private const uint GemvThreads = 32 * GemvRowsPerBlock;
    private const int MaxExperts = 512;

    // Kernel names by weight dtype (F32, F16, BF16) and tokens per pass (1, 2, 4, 8), built once: Linear runs per layer.
    private static readonly string[][] DenseGemvKernels = [.. new[] { "f32", "f16", "bf16" }.Select(GemvNames)];
    private static readonly string[] Q4GemvKernels = GemvNames("q4");
    private static readonly string[] Q8GemvKernels = GemvNames("q8");
    private static readonly string[][] SwiGluKernels = [.. new[] { "f32", "f16", "bf16" }.Select(t => Enumerable.Range(0, 9).Select(n => $"swiglu_{t}_{n}").ToArray())];

    [ThreadStatic]
    private static IntPtr t_currentContext;

    private readonly int _device;
    private readonly IntPtr _context;
    private readonly IntPtr _stream;
    private readonly CudaModule _kernels;
    private readonly (int Major, int Minor) _computeCapability;
    private CudaModule? _fusedKernels;
    private readonly CudaGemm _gemm;
    private readonly ConditionalWeakTable<IReadOnlyList<ExpertWeights?>, ExpertTable> _expertTables = [];
    private readonly List<ExpertTable> _expertTableList = [];
    private readonly Scratch _attentionPartials;
    private readonly Scratch _splitHigh;
    private readonly Scratch _splitLow;
    private readonly Scratch _expertHidden;
    private readonly Scratch _expertOutput;
    private bool _disposed;

    /// <summary>Bumped whenever a scratch block moves, which leaves graphs captured before it pointing at freed memory.</summary>
    internal int ScratchMoves { get; private set; }

    /// <summary>
    /// Opens GPU <paramref name="device"/> (an ordinal among the visible devices); by default this process's GPU
    /// (<see cref="DeviceForThisProcess"/>), so each rank of `granary launch` takes its own.
    /// </summary>
    /// <exception cref="CudaException">No driver, no GPU, or a CUDA library is missing.</exception>
    public CudaBackend(int? device = null)
    {
        var index = device ?? DeviceForThisProcess();
        CudaLibraries.EnsureRegistered();
        CudaLibraries.Load(CudaLibraries.Driver);
        var init = Driver.cuInit(0);
        if (init != 0)
        {
            throw new CudaException($"The CUDA driver found no usable GPU (cuInit returned {init}; 100 means no device).");
        }

        int count, ordinal, major, minor, multiprocessors;
        Driver.Check(Driver.cuDeviceGetCount(&count), "cuDeviceGetCount");
        if (index < 0 || index >= count)
        {
            throw new CudaException($"GPU {index} does not exist; the driver sees {count}.");
        }

        Driver.Check(Driver.cuDeviceGet(&ordinal, index), "cuDeviceGet");
        _device = ordinal;
        Device = index;
        IntPtr context;
        Driver.Check(Driver.cuDevicePrimaryCtxRetain(&context, ordinal), "cuDevicePrimaryCtxRetain");
        _context = context;
        MakeCurrent();
        Driver.Check(Driver.cuDeviceGetAttribute(&major, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, ordinal), "cuDeviceGetAttribute");
        Driver.Check(Driver.cuDeviceGetAttribute(&minor, Driver.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, ordinal), "cuDeviceGetAttribute");
        Driver.Check(Driver.cuDeviceGetAttribute(&multiprocessors, Driver.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, ordinal), "cuDeviceGetAttribute");
        MultiprocessorCount = multiprocessors;
        var name = stackalloc byte[256];
        Driver.Check(Driver.cuDeviceGetName(name, 256, ordinal), "cuDeviceGetName");
        DeviceName = $"{Encoding.ASCII.GetString(name, new Span<byte>(name, 256).IndexOf((byte)0))} (sm_{major}{minor}, {multiprocessors} SMs)";

        // Keep freed pool memory cached instead of returning it to the driver at every synchronisation.
        IntPtr pool;
        Driver.Check(Driver.cuDeviceGetDefaultMemPool(&pool, ordinal), "cuDeviceGetDefaultMemPool");
        var threshold = ulong.MaxValue;
        Driver.Check(Driver.cuMemPoolSetAttribute(pool, Driver.CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, &threshold), "cuMemPoolSetAttribute");

        IntPtr stream;
        Driver.Check(Driver.cuStreamCreate(&stream, Driver.CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        _stream = stream;
        _kernels = new CudaModule(major, minor);
        _computeCapability = (major, minor);
        CudaLibraries.Load(CudaLibraries.CublasLt);
        _gemm = new CudaGemm(AllocateRaw, Free);
        _attentionPartials = new Scratch(this);
        _splitHigh = new Scratch(this);
        _splitLow = new Scratch(this);
        _expertHidden = new Scratch(this);
        _expertOutput = new Scratch(this);
    }

    /// <summary>Overrides the GPU ordinal <see cref="DeviceForThisProcess"/> picks.</summary>
    public const string DeviceVariable = "GRANARY_CUDA_DEVICE";

    public string Name => "cuda";

    /// <summary>The ordinal of this backend's GPU among the visible devices.</summary>
    public int Device { get; }

    /// <summary>f32: see the class remarks.</summary>
    public DType ActivationDType => DType.F32;

    /// <summary>The GPU's name, compute capability and multiprocessor count.</summary>
    public string DeviceName { get; }

    public int MultiprocessorCount { get; }

    /// <summary>The stream every operation is queued on (CUstream), for NCCL and graph capture.</summary>
    public IntPtr Stream => _stream;

    public long AvailableMemoryBytes
    {
        get
        {
            MakeCurrent();
            nuint free, total;
            Driver.Check(Driver.cuMemGetInfo_v2(&free, &total), "cuMemGetInfo");
            return (long)free;
        }
    }

    /// <summary>Whether a CUDA GPU can be opened here; <paramref name="reason"/> says why not.</summary>
    public static bool IsAvailable(out string reason)
    {
        try
        {
            CudaLibraries.EnsureRegistered();
            CudaLibraries.Load(CudaLibraries.Driver);
            var init = Driver.cuInit(0);
            int count = 0;
            if (init != 0 || Driver.cuDeviceGetCount(&count) != 0 || count == 0)
            {
                reason = $"the CUDA driver reports no GPU (cuInit returned {init})";
                return false;
            }

            reason = string.Empty;
            return true;
        }
        catch (CudaException e)
        {
            reason = e.Message;
            return false;
        }
    }

    /// <summary>How many GPUs the driver shows this process (0 without a driver or GPU).</summary>
    public static int DeviceCount()
    {
        if (!IsAvailable(out _))
        {
            return 0;
        }

        int count = 0;
        return Driver.cuDeviceGetCount(&count) == 0 ? count : 0;
    }

    /// <summary>
    /// The GPU this process uses: <see cref="DeviceForRank"/> of GRANARY_RANK, which `granary launch` sets; GPU 0 (or
    /// <c>GRANARY_CUDA_DEVICE</c>) outside a launch.
    /// </summary>
    public static int DeviceForThisProcess() =>
        DeviceForRank(int.TryParse(Environment.GetEnvironmentVariable("GRANARY_RANK"), System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var rank) ? rank : 0);

    /// <summary>
    /// The GPU of rank <paramref name="rank"/> (one process per GPU): <c>GRANARY_CUDA_DEVICE</c> when set, otherwise the
    /// rank modulo the visible devices, so the local ranks 0..n-1 of one machine take GPUs 0..n-1 (and a rank whose
    /// CUDA_VISIBLE_DEVICES names one GPU takes that one).
    /// </summary>
    public static int DeviceForRank(int rank)
    {
        if (Environment.GetEnvironmentVariable(DeviceVariable) is { Length: > 0 } chosen)
        {
            return int.TryParse(chosen, System.Globalization.NumberStyles.Integer, System.Globalization.CultureInfo.InvariantCulture, out var ordinal) && ordinal >= 0
                ? ordinal
                : throw new CudaException($"{DeviceVariable}='{chosen}' is not a GPU ordinal.");
        }

        if (rank <= 0)
        {
            return 0;
        }

        CudaLibraries.EnsureRegistered();
        CudaLibraries.Load(CudaLibraries.Driver);
        int count = 0;
        if (Driver.cuInit(0) != 0 || Driver.cuDeviceGetCount(&count) != 0 || count == 0)
        {
            throw new CudaException("The CUDA driver found no usable GPU.");
        }

        return rank % count;
    }

    /// <summary>The device address of a CUDA tensor's first element.</summary>
    public static ulong PointerOf(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Buffer is not CudaBuffer buffer)
        {
            throw new ArgumentException($"{tensor} is not a CUDA tensor.", nameof(tensor));
        }

        ObjectDisposedException.ThrowIf(buffer.IsDisposed, tensor);
        return buffer.Pointer + (ulong)tensor.ByteOffset;
    }

    public Tensor Allocate(DType dtype, params int[] shape)
    {
        var tensor = AllocateUninitialized(dtype, shape);
        Driver.Check(Driver.cuMemsetD8Async(PointerOf(tensor), 0, (nuint)Math.Max(1, tensor.ByteLength), _stream), "cuMemsetD8Async");
        return tensor;
    }

    public Tensor Upload(ReadOnlySpan<byte> data, DType dtype, params int[] shape)
    {
        var tensor = AllocateUninitialized(dtype, shape);
        if (data.Length != tensor.ByteLength)
        {
            tensor.Dispose();
            throw new ArgumentException($"Upload of {data.Length} bytes does not match {dtype}[{string.Join(", ", shape)}] ({tensor.ByteLength} bytes).", nameof(data));
        }

        CopyToDevice(data, PointerOf(tensor));
        return tensor;
    }

    public Tensor Map(HostRegion region, DType dtype, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var bytes = checked(Tensor.ShapeElementCount(shape) * dtype.SizeInBytes());
        if (region.Pointer == null || region.Length < bytes)
        {
            throw new ArgumentException($"Host region of {region.Length} bytes cannot hold {dtype}[{string.Join(", ", shape)}] ({bytes} bytes).", nameof(region));
        }

        var tensor = AllocateUninitialized(dtype, shape);
        MakeCurrent();
        if (bytes > 0)
        {
            Driver.Check(Driver.cuMemcpyHtoDAsync_v2(PointerOf(tensor), region.Pointer, (nuint)bytes, _stream), "cuMemcpyHtoDAsync");
        }

        // The region may be unmapped once the caller is done with it: wait for the copy.
        Synchronize();
        GC.KeepAlive(region.Owner);
        return tensor;
    }

    public void Download(Tensor source, Span<byte> destination)
    {
        if (destination.Length != source.ByteLength)
        {
            throw new ArgumentException($"Download of {source} needs {source.ByteLength} bytes, destination has {destination.Length}.", nameof(destination));
        }

        MakeCurrent();
        if (destination.Length > 0)
        {
            fixed (byte* pointer = destination)
            {
                Driver.Check(Driver.cuMemcpyDtoHAsync_v2(pointer, PointerOf(source), (nuint)destination.Length, _stream), "cuMemcpyDtoHAsync");
            }
        }

        Synchronize();
    }

    public void Synchronize()
    {
        MakeCurrent();
        Driver.Check(Driver.cuStreamSynchronize(_stream), "cuStreamSynchronize");
    }

    public void Copy(Tensor source, Tensor destination)
    {
        TensorChecks.CopyShapes(source, destination);

        MakeCurrent();
        if (source.ByteLength > 0)
        {
            Driver.Check(Driver.cuMemcpyDtoDAsync_v2(PointerOf(destination), PointerOf(source), (nuint)source.ByteLength, _stream), "cuMemcpyDtoDAsync");
        }
    }

    public void Embedding(LinearWeight table, Tensor ids, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(table);
        RequireDType(ids, DType.I32, nameof(ids));
        RequireF32(output, nameof(output));
        TensorChecks.EmbeddingShapes(table, ids, output);

        if (ids.ElementCount == 0)
        {
            return;
        }

        var grid = new Dim((uint)ids.ElementCount);
        switch (table)
        {
            case DenseWeight dense:
                Launch("embedding_dense", grid, 256, [Arg(dense.Weight), (int)dense.Weight.DType, Arg(ids), Arg(output), table.InFeatures, table.OutFeatures]);
                break;
            case QuantizedWeight quantized:
                RequireQuantizedScales(quantized);
                Launch(
                    "embedding_quantized",
                    grid,
                    256,
                    [Arg(quantized.Codes), Arg(quantized.Scales), Arg(quantized.Biases), (int)quantized.Scales.DType, quantized.Bits, quantized.GroupSize,
                     Arg(ids), Arg(output), table.InFeatures, table.OutFeatures]);
                break;
            default:
                throw new ArgumentException($"Unsupported weight type {table.GetType().Name}.", nameof(table));
        }
    }

    public void Linear(Tensor input, LinearWeight weight, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(weight);
        RequireF32(input, nameof(input));
        RequireF32(output, nameof(output));
        TensorChecks.LinearShapes(input, weight, output);

        RequireDisjoint(input, output);
        var n = (int)input.Rows;
        if (n == 0)
        {
            return;
        }

        var (bias, biasType) = weight.Bias is { } b ? (PointerOf(b), (int)RequireFloat(b).DType) : (0UL, 0);
        var (inFeatures, outFeatures) = (weight.InFeatures, weight.OutFeatures);
        switch (weight)
        {
            case DenseWeight dense when n <= GemvMaxTokens:
                {
                    var tokensPerPass = TokensPerPass(n);
                    var perVector = dense.Weight.DType == DType.F32 ? 4 : 8;
                    var vectorized = inFeatures % perVector == 0 && PointerOf(dense.Weight) % 16 == 0 && PointerOf(input) % 16 == 0 ? 1 : 0;
                    Launch(
                        DenseGemvKernels[(int)dense.Weight.DType][tokensPerPass],
                        new Dim(Blocks(outFeatures, GemvRowsPerBlock), (uint)((n + tokensPerPass - 1) / tokensPerPass)),
                        GemvThreads,
                        [Arg(dense.Weight), Arg(input), Arg(output), inFeatures, outFeatures, n, bias, biasType, vectorized]);
                    break;
                }

            case DenseWeight dense:
                GemmLinear(input, dense, output, n);
                if (bias != 0)
                {
                    Launch("add_bias", GridFor(output.ElementCount), 256, [Arg(output), bias, biasType, (long)n, outFeatures]);
                }

                break;
            case QuantizedWeight quantized:
                {
                    RequireQuantizedScales(quantized);
                    RequireAligned16(quantized.Codes, input);
                    var tokensPerPass = TokensPerPass(n);
                    Launch(
                        (quantized.Bits == 4 ? Q4GemvKernels : Q8GemvKernels)[tokensPerPass],
                        new Dim(Blocks(outFeatures, GemvRowsPerBlock), (uint)((n + tokensPerPass - 1) / tokensPerPass)),
                        GemvThreads,
                        [Arg(quantized.Codes), Arg(quantized.Scales), Arg(quantized.Biases), (int)quantized.Scales.DType, quantized.GroupSize,
                         Arg(input), Arg(output), inFeatures, outFeatures, n, bias, biasType]);
                    break;
                }

            default:
                throw new ArgumentException($"Unsupported weight type {weight.GetType().Name}.", nameof(weight));
        }
    }

    /// <summary>
    /// Row-major f32 product c [m, n] (+)= op(a) op(b): a is [m, k] ([k, m] when <paramref name="transposeA"/>), b is
    /// [k, n] ([n, k] when <paramref name="transposeB"/>). Plain f32 arithmetic through cuBLASLt (no TF32), so it
    /// matches a host f32 product to rounding: the matrix products of training (Granary.Training) run on it.
    /// </summary>
    public void MatrixMultiply(Tensor a, bool transposeA, Tensor b, bool transposeB, Tensor c, bool accumulate = false)
    {
        RequireF32(a, nameof(a));
        RequireF32(b, nameof(b));
        RequireF32(c, nameof(c));
        if (a.Rank != 2 || b.Rank != 2 || c.Rank != 2)
        {
            throw new ArgumentException($"MatrixMultiply needs matrices; got {a}, {b} and {c}.");
        }

        var (m, k) = transposeA ? (a.Dim(1), a.Dim(0)) : (a.Dim(0), a.Dim(1));
        var (bRows, n) = transposeB ? (b.Dim(1), b.Dim(0)) : (b.Dim(0), b.Dim(1));
        if (bRows != k || c.Dim(0) != m || c.Dim(1) != n)
        {
            throw new ArgumentException(
                $"MatrixMultiply of a{(transposeA ? "^T" : "")} {a} and b{(transposeB ? "^T" : "")} {b} cannot write {c}: needs [{m}, k] x [k, n] = [{m}, n] with equal k.");
        }

        RequireDisjoint(a, c);
        RequireDisjoint(b, c);
        if (m == 0 || n == 0)
        {
            return;
        }

        MakeCurrent();
        if (k == 0)
        {
            // An empty sum: cuBLASLt takes no zero-length operands.
            if (!accumulate)
            {
                Driver.Check(Driver.cuMemsetD8Async(PointerOf(c), 0, (nuint)c.ByteLength, _stream), "cuMemsetD8Async");
            }

            return;
        }

        _gemm.Multiply(PointerOf(a), transposeA, PointerOf(b), transposeB, PointerOf(c), m, n, k, DType.F32, accumulate, _stream);
    }

    public void RmsNorm(Tensor input, Tensor weight, float epsilon, Tensor output)
    {
        RequireF32(input, nameof(input));
        RequireF32(output, nameof(output));
        RequireSameShape(input, output);
        ArgumentNullException.ThrowIfNull(weight);
        if (!weight.DType.IsFloatingPoint() || weight.ElementCount != input.Columns)
        {
            throw new ArgumentException($"RmsNorm weight {weight} must be a floating-point vector of {input.Columns} elements for input {input}.", nameof(weight));
        }

        if (input.Rows > 0)
        {
            Launch("rms_norm", new Dim((uint)input.Rows), RowThreads(input.Columns), [Arg(input), Arg(weight), (int)weight.DType, epsilon, Arg(output), input.Columns]);
        }
    }

    public void Rope(Tensor x, Tensor positions, Tensor inverseFrequency, float attentionScaling)
    {
        RequireF32(x, nameof(x));
        RequireDType(positions, DType.I32, nameof(positions));
        RequireF32(inverseFrequency, nameof(inverseFrequency));
        TensorChecks.RopeShapes(x, positions, inverseFrequency);

        if (x.Dim(0) > 0)
        {
            Launch("rope", new Dim((uint)x.Dim(0)), RowThreads(x.Dim(1) * x.Dim(2) / 2), [Arg(x), Arg(positions), Arg(inverseFrequency), attentionScaling, x.Dim(1), x.Dim(2)]);
        }
    }

    public void Softmax(Tensor x)
    {
        RequireF32(x, nameof(x));
        if (x.Rows > 0)
        {
            Launch("softmax_rows", new Dim((uint)x.Rows), RowThreads(x.Columns), [Arg(x), x.Columns]);
        }
    }

    public void SiluMul(Tensor gate, Tensor up, Tensor output)
    {
        RequireF32(gate, nameof(gate));
        RequireF32(up, nameof(up));
        RequireF32(output, nameof(output));
        RequireSameShape(gate, up);
        RequireSameShape(gate, output);
        if (gate.ElementCount > 0)
        {
            Launch("silu_mul", GridFor(gate.ElementCount), 256, [Arg(gate), Arg(up), Arg(output), gate.ElementCount]);
        }
    }

    public void Add(Tensor a, Tensor b, Tensor output) => Binary(a, b, output, multiply: false);

    public void Mul(Tensor a, Tensor b, Tensor output) => Binary(a, b, output, multiply: true);

    public void Attention(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, float scale, Tensor output)
    {
        RequireF32(query, nameof(query));
        RequireF32(keyCache, nameof(keyCache));
        RequireF32(valueCache, nameof(valueCache));
        RequireF32(output, nameof(output));
        var (n, heads, headDim, kvHeads) = TensorChecks.AttentionShapes(query, keyCache, valueCache, startPosition, output);

        if (headDim > MaxHeadDim)
        {
            throw new ArgumentException($"Head dimension {headDim} exceeds the {MaxHeadDim} the attention kernel holds.", nameof(query));
        }

        if (n == 0)
        {
            return;
        }

        // Split the keys so that short query batches (decode) still fill every multiprocessor; about four blocks each.
        var rows = n * heads;
        var keys = startPosition + n;
        var wanted = Math.Max(1, (4 * MultiprocessorCount + rows - 1) / rows);
        var chunk = Math.Max(32, (keys + wanted - 1) / wanted);
        var splits = (keys + chunk - 1) / chunk;
        var partials = splits > 1 ? _attentionPartials.Get(4L * rows * splits * (headDim + 2)) : 0UL;
        Launch(
            "attention_partial",
            new Dim((uint)rows, (uint)splits),
            128,
            [Arg(query), Arg(keyCache), Arg(valueCache), Arg(output), partials, heads, kvHeads, headDim, startPosition, scale, chunk, splits, 0UL]);
        if (splits > 1)
        {
            Launch("attention_combine", new Dim((uint)rows), (uint)Math.Max(32, (headDim + 31) / 32 * 32), [partials, Arg(output), headDim, splits]);
        }
    }

    public void TopKRouting(Tensor routerLogits, int k, bool normalizeTopK, Tensor indices, Tensor weights)
    {
        RequireF32(routerLogits, nameof(routerLogits));
        RequireDType(indices, DType.I32, nameof(indices));
        RequireF32(weights, nameof(weights));
        var experts = routerLogits.Columns;
        var tokens = routerLogits.Rows;
        TensorChecks.RoutingShapes(routerLogits, k, indices, weights);

        if (experts > MaxExperts)
        {
            throw new ArgumentException($"The routing kernel handles at most {MaxExperts} experts, got {experts}.", nameof(routerLogits));
        }

        if (tokens > 0)
        {
            Launch("topk_routing", new Dim(Blocks(tokens, 128)), 128, [Arg(routerLogits), experts, k, normalizeTopK ? 1 : 0, Arg(indices), Arg(weights), (int)tokens]);
        }
    }

    public void MixtureOfExperts(Tensor input, Tensor indices, Tensor weights, IReadOnlyList<ExpertWeights?> experts, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(experts);
        RequireF32(input, nameof(input));
        RequireDType(indices, DType.I32, nameof(indices));
        RequireF32(weights, nameof(weights));
        RequireF32(output, nameof(output));
        RequireSameShape(input, output);
        RequireDisjoint(input, output);
        var tokens = (int)input.Rows;
        var hidden = input.Columns;
        var k = indices.Columns;
        if (indices.Rows != tokens || weights.Rows != tokens || weights.Columns != k)
        {
            throw new ArgumentException($"Indices {indices} and weights {weights} must be [{tokens}, k] for input {input}.");
        }

        if (tokens == 0)
        {
            return;
        }

        var table = ExpertTableFor(experts, hidden);
        if (table is null)
        {
            // No expert is held here: this rank's share of the mixture is zero.
            Driver.Check(Driver.cuMemsetD8Async(PointerOf(output), 0, (nuint)output.ByteLength, _stream), "cuMemsetD8Async");
            return;
        }

        var assignments = tokens * k;
        var expertHidden = _expertHidden.Get(4L * assignments * table.Intermediate);
        var expertOutput = _expertOutput.Get(4L * assignments * hidden);
        Launch(
            $"moe_gate_up_{table.Suffix}",
            new Dim(Blocks(table.Intermediate, GemvRowsPerBlock), (uint)assignments),
            GemvThreads,
            [table.Pointer, Arg(indices), Arg(input), expertHidden, hidden, table.Intermediate, k, table.ScaleType, table.GroupSize, table.Vectorized ? 1 : 0]);
        Launch(
            $"moe_down_{table.Suffix}",
            new Dim(Blocks(hidden, GemvRowsPerBlock), (uint)assignments),
            GemvThreads,
            [table.Pointer, Arg(indices), expertHidden, expertOutput, hidden, table.Intermediate, table.ScaleType, table.GroupSize, table.Vectorized ? 1 : 0]);
        Launch("moe_combine", GridFor(output.ElementCount), 256, [expertOutput, Arg(weights), Arg(output), tokens, hidden, k]);
    }

    /// <summary>
    /// Decode fusion: <paramref name="residual"/> += <paramref name="delta"/> (when given), then
    /// <paramref name="output"/> = RMSNorm(residual) * weight: <see cref="Add"/> and <see cref="RmsNorm"/> in one kernel.
    /// </summary>
    public void AddRmsNorm(Tensor residual, Tensor? delta, Tensor weight, float epsilon, Tensor output)
    {
        RequireF32(residual, nameof(residual));
        RequireF32(output, nameof(output));
        RequireSameShape(residual, output);
        if (delta is not null)
        {
            RequireF32(delta, nameof(delta));
            RequireSameShape(residual, delta);
        }

        ArgumentNullException.ThrowIfNull(weight);
        if (!weight.DType.IsFloatingPoint() || weight.ElementCount != residual.Columns)
        {
            throw new ArgumentException($"RmsNorm weight {weight} must be a floating-point vector of {residual.Columns} elements for {residual}.", nameof(weight));
        }

        if (residual.Rows > 0)
        {
            LaunchFused(
                "add_rms_norm",
                new Dim((uint)residual.Rows),
                RowThreads(residual.Columns),
                [Arg(residual), delta is null ? 0UL : PointerOf(delta), Arg(weight), (int)weight.DType, epsilon, Arg(output), residual.Columns]);
        }
    }

    /// <summary>
    /// Decode fusion of a fused q|k|v projection's output <paramref name="qkv"/> [n, (heads + 2 kvHeads) headDim]: RMSNorm
    /// of each query and key head (when the norms are given, as Qwen3 has), rotary embedding at
    /// <paramref name="positions"/> (i32 [n] in device memory, so a captured step can be replayed at later positions),
    /// queries into <paramref name="query"/> [n, heads, headDim] and keys and values appended to the caches
    /// [capacity, kvHeads, headDim] at each token's position. Replaces two RMSNorms, two RoPEs and two cache copies.
    /// </summary>
    public void QkNormRopeAppend(
        Tensor qkv, Tensor? queryNorm, Tensor? keyNorm, float epsilon, Tensor positions, Tensor inverseFrequency, float attentionScaling,
        Tensor query, Tensor keyCache, Tensor valueCache)
    {
        RequireF32(qkv, nameof(qkv));
        RequireF32(query, nameof(query));
        RequireF32(keyCache, nameof(keyCache));
        RequireF32(valueCache, nameof(valueCache));
        RequireF32(inverseFrequency, nameof(inverseFrequency));
        RequireDType(positions, DType.I32, nameof(positions));
        if (query.Rank != 3 || keyCache.Rank != 3 || !keyCache.Shape.AsSpan().SequenceEqual(valueCache.Shape))
        {
            throw new ArgumentException($"QkNormRopeAppend needs query [n, heads, headDim] and equal caches [capacity, kvHeads, headDim]; got {query}, {keyCache}, {valueCache}.");
        }

        var (n, heads, headDim, kvHeads) = (query.Dim(0), query.Dim(1), query.Dim(2), keyCache.Dim(1));
        if (keyCache.Dim(2) != headDim || headDim % 2 != 0 || headDim > MaxHeadDim || qkv.Rows != n || qkv.Columns != (heads + (2 * kvHeads)) * headDim
            || positions.ElementCount != n || inverseFrequency.ElementCount != headDim / 2)
        {
            throw new ArgumentException(
                $"QkNormRopeAppend: qkv {qkv} must be [{n}, {(heads + (2 * kvHeads)) * headDim}], positions [{n}], inverse frequencies [{headDim / 2}] " +
                $"for query {query} and caches {keyCache} (even head dim up to {MaxHeadDim}).");
        }

        var normType = 0;
        foreach (var norm in new[] { queryNorm, keyNorm })
        {
            if (norm is not null && (!norm.DType.IsFloatingPoint() || norm.ElementCount != headDim || norm.Buffer is not CudaBuffer))
            {
                throw new ArgumentException($"Head norm {norm} must be a CUDA floating-point vector of {headDim} elements.");
            }

            normType = norm is null ? normType : (int)norm.DType;
        }

        if (queryNorm is not null && keyNorm is not null && queryNorm.DType != keyNorm.DType)
        {
            throw new ArgumentException($"Query and key norms must share a dtype; got {queryNorm} and {keyNorm}.");
        }

        if (n > 0)
        {
            LaunchFused(
                "qk_norm_rope_append",
                new Dim((uint)n, (uint)(heads + (2 * kvHeads))),
                RowThreads(headDim),
                [Arg(qkv), heads, kvHeads, headDim, queryNorm is null ? 0UL : PointerOf(queryNorm), keyNorm is null ? 0UL : PointerOf(keyNorm), normType, epsilon,
                 Arg(positions), Arg(inverseFrequency), attentionScaling, Arg(query), Arg(keyCache), Arg(valueCache)]);
        }
    }

    /// <summary>
    /// Decode fusion: <paramref name="output"/> [n, inner] = silu(x Wg^T) * (x Wu^T) for <paramref name="gateUp"/>, the gate
    /// and up projections stacked as one [2 inner, in] weight: both projections and SiLU-mul in one pass (n &lt;= 8).
    /// </summary>
    public void SwiGluLinear(Tensor input, DenseWeight gateUp, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(gateUp);
        RequireF32(input, nameof(input));
        RequireF32(output, nameof(output));
        var n = (int)input.Rows;
        if (input.Columns != gateUp.InFeatures || gateUp.OutFeatures != 2 * output.Columns || output.Rows != n || gateUp.Bias is not null)
        {
            throw new ArgumentException($"SwiGluLinear needs a bias-free [2 inner, {input.Columns}] weight for input {input} and output [n, inner]; got {gateUp.Weight} and {output}.");
        }

        if (n > GemvMaxTokens)
        {
            throw new ArgumentException($"SwiGluLinear is a decode GEMV for up to {GemvMaxTokens} tokens, got {n}.", nameof(input));
        }

        RequireDisjoint(input, output);
        if (n == 0)
        {
            return;
        }

        if (gateUp.Weight.DType is not (DType.F32 or DType.F16 or DType.BF16))
        {
            throw new ArgumentException($"SwiGluLinear weights must be f32, f16 or bf16, got {gateUp.Weight}.", nameof(gateUp));
        }

        var tokensPerPass = TokensPerPass(n);
        var perVector = gateUp.Weight.DType == DType.F32 ? 4 : 8;
        var vectorized = input.Columns % perVector == 0 && PointerOf(gateUp.Weight) % 16 == 0 && PointerOf(input) % 16 == 0 ? 1 : 0;
        LaunchFused(
            SwiGluKernels[(int)gateUp.Weight.DType][tokensPerPass],
            new Dim(Blocks(output.Columns, GemvRowsPerBlock), (uint)((n + tokensPerPass - 1) / tokensPerPass)),
            GemvThreads,
            [Arg(gateUp.Weight), Arg(input), Arg(output), input.Columns, output.Columns, n, vectorized]);
    }

    /// <summary>
    /// <see cref="Attention(Tensor, Tensor, Tensor, int, float, Tensor)"/> with the start position read from device
    /// memory (<paramref name="startPosition"/>, i32 [1]), so a captured decode step can be replayed at every position:
    /// the keys are split for <paramref name="positionLimit"/> (an upper bound of start + n), and splits past the
    /// position do nothing.
    /// </summary>
    public void Attention(Tensor query, Tensor keyCache, Tensor valueCache, Tensor startPosition, int positionLimit, float scale, Tensor output)
    {
        RequireF32(query, nameof(query));
        RequireF32(keyCache, nameof(keyCache));
        RequireF32(valueCache, nameof(valueCache));
        RequireF32(output, nameof(output));
        RequireDType(startPosition, DType.I32, nameof(startPosition));
        if (query.Rank != 3 || keyCache.Rank != 3 || !keyCache.Shape.AsSpan().SequenceEqual(valueCache.Shape) || startPosition.ElementCount < 1)
        {
            throw new ArgumentException($"Attention needs query [n, heads, headDim], equal caches [capacity, kvHeads, headDim] and a start position; got {query}, {keyCache}, {valueCache}, {startPosition}.");
        }

        RequireSameShape(query, output);
        var (n, heads, headDim) = (query.Dim(0), query.Dim(1), query.Dim(2));
        var kvHeads = keyCache.Dim(1);
        if (keyCache.Dim(2) != headDim || kvHeads == 0 || heads % kvHeads != 0 || headDim > MaxHeadDim)
        {
            throw new ArgumentException($"Query {query} and caches {keyCache}: head dims must match (up to {MaxHeadDim}) and heads must be a multiple of kv heads.");
        }

        if (positionLimit < n || positionLimit > keyCache.Dim(0))
        {
            throw new ArgumentOutOfRangeException(nameof(positionLimit), positionLimit, $"The position limit must lie in [{n}, {keyCache.Dim(0)}] for {n} queries and the cache {keyCache}.");
        }

        if (n == 0)
        {
            return;
        }

        var rows = n * heads;
        var wanted = Math.Max(1, (4 * MultiprocessorCount + rows - 1) / rows);
        var chunk = Math.Max(32, (positionLimit + wanted - 1) / wanted);
        var splits = (positionLimit + chunk - 1) / chunk;
        var partials = splits > 1 ? _attentionPartials.Get(4L * rows * splits * (headDim + 2)) : 0UL;
        Launch(
            "attention_partial",
            new Dim((uint)rows, (uint)splits),
            128,
            [Arg(query), Arg(keyCache), Arg(valueCache), Arg(output), partials, heads, kvHeads, headDim, 0, scale, chunk, splits, Arg(startPosition)]);
        if (splits > 1)
        {
            Launch("attention_combine", new Dim((uint)rows), (uint)Math.Max(32, (headDim + 31) / 32 * 32), [partials, Arg(output), headDim, splits]);
        }
    }

    /// <summary>Adds <paramref name="step"/> to every element of i32 <paramref name="positions"/> on the device (the last node of a replayed decode step).</summary>
    public void AdvancePositions(Tensor positions, int step)
    {
        RequireDType(positions, DType.I32, nameof(positions));
        LaunchFused("advance_positions", new Dim(1), 32, [Arg(positions), (int)positions.ElementCount, step]);
    }

    /// <summary>
    /// Fills a floating-point tensor with deterministic uniform values in [low, high) computed on the device (weights
    /// for benchmarks, inputs for tests) without moving them over PCIe.
    /// </summary>
    public void FillUniform(Tensor tensor, float low, float high, ulong seed)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        RequireFloat(tensor);
        if (tensor.ElementCount > 0)
        {
            Launch("fill_uniform", GridFor(tensor.ElementCount), 256, [Arg(tensor), (int)tensor.DType, tensor.ElementCount, low, high, seed]);
        }
    }

    /// <summary>
    /// Records the work <paramref name="step"/> queues as a CUDA graph instead of running it. Replaying the graph runs
    /// the same kernels with the same arguments (addresses, sizes, positions) at a fraction of the launch cost, so the
    /// step must read everything that changes between replays from device memory. Scratch must already be sized: run
    /// the step once eagerly first.
    /// </summary>
    public CudaGraph Capture(Action step)
    {
        ArgumentNullException.ThrowIfNull(step);
        MakeCurrent();
        Driver.Check(Driver.cuStreamBeginCapture_v2(_stream, Driver.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL), "cuStreamBeginCapture");
        IntPtr graph;
        try
        {
            step();
        }
        finally
        {
            Driver.Check(Driver.cuStreamEndCapture(_stream, &graph), "cuStreamEndCapture");
        }

        return new CudaGraph(this, graph);
    }

    /// <summary>Queues a copy of host bytes into <paramref name="destination"/> (the span may be reused at once).</summary>
    public void Write(ReadOnlySpan<byte> data, Tensor destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        if (data.Length != destination.ByteLength)
        {
            throw new ArgumentException($"Write of {data.Length} bytes does not match {destination} ({destination.ByteLength} bytes).", nameof(data));
        }

        CopyToDevice(data, PointerOf(destination));
    }

    /// <summary>
    /// <see cref="Capture"/> as <see cref="IFusedDecodeBackend.TryRecord"/>: a driver that refuses the capture (or the
    /// graph's instantiation) gives false and its error, and the stream is usable again for eager work.
    /// </summary>
    public bool TryRecord(Action step, out IRecordedStep? recorded, out string? failure)
    {
        try
        {
            recorded = Capture(step);
            failure = null;
            return true;
        }
        catch (CudaException e)
        {
            recorded = null;
            failure = e.Message;
            return false;
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        MakeCurrent();
        _ = Driver.cuStreamSynchronize(_stream);
        foreach (var table in _expertTableList)
        {
            Free(table.Pointer);
        }

        _attentionPartials.Dispose();
        _splitHigh.Dispose();
        _splitLow.Dispose();
        _expertHidden.Dispose();
        _expertOutput.Dispose();
        _gemm.Dispose();
        _ = Driver.cuStreamSynchronize(_stream);
        _kernels.Dispose();
        _fusedKernels?.Dispose();
        _ = Driver.cuStreamDestroy_v2(_stream);
        _disposed = true;
        _ = Driver.cuDevicePrimaryCtxRelease_v2(_device);
    }

    internal void MakeCurrent() => MakeCurrent(_context);

    /// <summary>Makes <paramref name="context"/> current on this thread (cached: every CUDA type here goes through it).</summary>
    internal static void MakeCurrent(IntPtr context)
    {
        if (t_currentContext != context)
        {
            Driver.Check(Driver.cuCtxSetCurrent(context), "cuCtxSetCurrent");
            t_currentContext = context;
        }
    }

    internal void Free(ulong pointer)
    {
        // Tensors that outlive the backend lose their memory with the context; nothing to queue.
        if (_disposed || pointer == 0)
        {
            return;
        }

        MakeCurrent();
        Driver.Check(Driver.cuMemFreeAsync(pointer, _stream), "cuMemFreeAsync");
    }

    private ulong AllocateRaw(long bytes)
    {
        MakeCurrent();
        ulong pointer;
        Driver.Check(Driver.cuMemAllocAsync(&pointer, (nuint)Math.Max(1, bytes), _stream), $"cuMemAllocAsync({bytes} bytes)");
        return pointer;
    }

    private Tensor AllocateUninitialized(DType dtype, int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        ObjectDisposedException.ThrowIf(_disposed, this);
        var bytes = checked(Tensor.ShapeElementCount(shape) * dtype.SizeInBytes());
        return new Tensor(new CudaBuffer(this, AllocateRaw(bytes), bytes), dtype, (int[])shape.Clone());
    }

    private void CopyToDevice(ReadOnlySpan<byte> data, ulong destination)
    {
        MakeCurrent();
        if (data.IsEmpty)
        {
            return;
        }

        // From pageable memory the driver stages the bytes before returning, so the span may be reused at once.
        fixed (byte* pointer = data)
        {
            Driver.Check(Driver.cuMemcpyHtoDAsync_v2(destination, pointer, (nuint)data.Length, _stream), "cuMemcpyHtoDAsync");
        }
    }

    private void GemmLinear(Tensor input, DenseWeight dense, Tensor output, int n)
    {
        var (inFeatures, outFeatures) = (dense.InFeatures, dense.OutFeatures);
        var weightType = dense.Weight.DType;
        if (weightType == DType.F32)
        {
            _gemm.Run(PointerOf(dense.Weight), PointerOf(input), PointerOf(output), n, inFeatures, outFeatures, DType.F32, accumulate: false, _stream);
            return;
        }

        // x = high + low in the weight's 16-bit type keeps ~16 bits of each activation: two tensor-core GEMMs then
        // match an f32 product to about 1e-5 relative, where one GEMM on bf16(x) would be off by ~1e-3.
        var count = input.ElementCount;
        var high = _splitHigh.Get(2 * count);
        var low = _splitLow.Get(2 * count);
        Launch("split_f32", GridFor(count), 256, [Arg(input), high, low, count, (int)weightType]);
        _gemm.Run(PointerOf(dense.Weight), high, PointerOf(output), n, inFeatures, outFeatures, weightType, accumulate: false, _stream);
        _gemm.Run(PointerOf(dense.Weight), low, PointerOf(output), n, inFeatures, outFeatures, weightType, accumulate: true, _stream);
    }

    private ExpertTable? ExpertTableFor(IReadOnlyList<ExpertWeights?> experts, int hidden)
    {
        if (_expertTables.TryGetValue(experts, out var cached))
        {
            return cached.Pointer == 0 ? null : cached;
        }

        // One layout for every held expert and projection, so one kernel instantiation serves the whole mixture.
        string? suffix = null;
        var (intermediate, scaleType, groupSize, vectorized) = (0, 0, 0, true);
        var entries = new ulong[experts.Count * 9];
        for (var e = 0; e < experts.Count; e++)
        {
            if (experts[e] is not { } expert)
            {
                continue;
            }

            LinearWeight[] projections = [expert.Gate, expert.Up, expert.Down];
            if (expert.Gate.InFeatures != hidden || expert.Up.InFeatures != hidden || expert.Down.OutFeatures != hidden
                || expert.Up.OutFeatures != expert.Gate.OutFeatures || expert.Down.InFeatures != expert.Gate.OutFeatures)
            {
                throw new ArgumentException($"Expert {e} does not map {hidden} features through one intermediate width and back.", nameof(experts));
            }

            intermediate = expert.Gate.OutFeatures;
            for (var p = 0; p < 3; p++)
            {
                var projection = projections[p];
                if (projection.Bias is not null)
                {
                    throw new ArgumentException($"Expert {e} has a bias; mixture experts here are bias-free (Qwen3-MoE).", nameof(experts));
                }

                string layout;
                switch (projection)
                {
                    case DenseWeight dense:
                        layout = DTypeName(dense.Weight.DType);
                        entries[(e * 9) + (p * 3)] = PointerOf(dense.Weight);
                        var perVector = dense.Weight.DType == DType.F32 ? 4 : 8;
                        vectorized &= projection.InFeatures % perVector == 0 && PointerOf(dense.Weight) % 16 == 0;
                        break;
                    case QuantizedWeight quantized:
                        RequireQuantizedScales(quantized);
                        RequireAligned16(quantized.Codes, quantized.Codes);
                        layout = $"q{quantized.Bits}";
                        if (groupSize != 0 && (groupSize != quantized.GroupSize || scaleType != (int)quantized.Scales.DType))
                        {
                            throw new ArgumentException("All quantized experts must share group size and scale dtype.", nameof(experts));
                        }

                        (groupSize, scaleType) = (quantized.GroupSize, (int)quantized.Scales.DType);
                        entries[(e * 9) + (p * 3)] = PointerOf(quantized.Codes);
                        entries[(e * 9) + (p * 3) + 1] = PointerOf(quantized.Scales);
                        entries[(e * 9) + (p * 3) + 2] = PointerOf(quantized.Biases);
                        break;
                    default:
                        throw new ArgumentException($"Unsupported expert weight type {projection.GetType().Name}.", nameof(experts));
                }

                if (suffix is not null && suffix != layout)
                {
                    throw new ArgumentException($"Experts mix weight layouts ({suffix} and {layout}); one layout per mixture is supported.", nameof(experts));
                }

                suffix = layout;
            }
        }

        var table = new ExpertTable(suffix is null ? 0 : UploadTable(entries), suffix ?? string.Empty, intermediate, scaleType, groupSize, vectorized && hidden % 4 == 0 && intermediate % 4 == 0);
        _expertTables.Add(experts, table);
        _expertTableList.Add(table);
        return suffix is null ? null : table;
    }

    private ulong UploadTable(ulong[] entries)
    {
        var pointer = AllocateRaw(entries.Length * 8L);
        CopyToDevice(System.Runtime.InteropServices.MemoryMarshal.AsBytes(entries.AsSpan()), pointer);
        return pointer;
    }

    private void Binary(Tensor a, Tensor b, Tensor output, bool multiply)
    {
        RequireF32(a, nameof(a));
        RequireF32(b, nameof(b));
        RequireF32(output, nameof(output));
        var broadcast = TensorChecks.BinaryShapes(a, b, output);

        if (a.ElementCount > 0)
        {
            Launch("add_mul", GridFor(a.ElementCount), 256, [Arg(a), Arg(b), Arg(output), a.ElementCount, broadcast ? a.Columns : 0, multiply ? 1 : 0]);
        }
    }

    private void Launch(string kernel, Dim grid, uint threads, ReadOnlySpan<KernelArgument> arguments) => Launch(_kernels, kernel, grid, threads, arguments);

    private void LaunchFused(string kernel, Dim grid, uint threads, ReadOnlySpan<KernelArgument> arguments)
    {
        MakeCurrent();
        _fusedKernels ??= new CudaModule(_computeCapability.Major, _computeCapability.Minor, CudaModule.FusedSources);
        Launch(_fusedKernels, kernel, grid, threads, arguments);
    }

    private void Launch(CudaModule module, string kernel, Dim grid, uint threads, ReadOnlySpan<KernelArgument> arguments)
    {
        MakeCurrent();
        var function = module[kernel];
        var values = stackalloc ulong[arguments.Length];
        var pointers = stackalloc void*[arguments.Length];
        for (var i = 0; i < arguments.Length; i++)
        {
            values[i] = arguments[i].Bits;
            pointers[i] = values + i;
        }

        Driver.Check(Driver.cuLaunchKernel(function, grid.X, grid.Y, 1, threads, 1, 1, 0, _stream, pointers, null), kernel);
    }

    private static KernelArgument Arg(Tensor tensor) => PointerOf(tensor);

    private static uint Blocks(long items, int perBlock) => (uint)((items + perBlock - 1) / perBlock);

    private Dim GridFor(long elements) => new((uint)Math.Clamp((elements + 255) / 256, 1, MultiprocessorCount * 16L));

    private static uint RowThreads(int columns) => (uint)Math.Clamp((columns + 31) / 32 * 32, 32, 256);

    private static string[] GemvNames(string weight) => [.. Enumerable.Range(0, 9).Select(t => $"gemv_{weight}_{t}")];

    private static int TokensPerPass(int n) => n switch
    {
        1 => 1,
        2 => 2,
        <= 4 => 4,
        _ => 8,
    };

    private static string DTypeName(DType dtype) => dtype switch
    {
        DType.F32 => "f32",
        DType.F16 => "f16",
        DType.BF16 => "bf16",
        _ => throw new ArgumentException($"Weights must be f32, f16 or bf16, got {dtype}."),
    };

    private static void RequireF32(Tensor t, string name) => RequireDType(t, DType.F32, name);

    private static void RequireDType(Tensor t, DType dtype, string name) => TensorChecks.RequireDType<CudaBuffer>(t, dtype, name, "CUDA");

    private static Tensor RequireFloat(Tensor t)
    {
        if (!t.DType.IsFloatingPoint() || t.Buffer is not CudaBuffer)
        {
            throw new ArgumentException($"{t} must be a floating-point CUDA tensor.");
        }

        return t;
    }

    private static void RequireQuantizedScales(QuantizedWeight weight) => TensorChecks.RequireQuantizedScales(weight);

    // The quantized kernels read codes and activations 16 bytes at a time (rows of MLX codes always are).
    private static void RequireAligned16(Tensor codes, Tensor input)
    {
        if (PointerOf(codes) % 16 != 0 || PointerOf(input) % 16 != 0)
        {
            throw new ArgumentException($"Quantized codes {codes} and activations {input} must start on 16-byte boundaries.");
        }
    }

    private static void RequireSameShape(Tensor a, Tensor b) => TensorChecks.RequireSameShape(a, b);

    private static void RequireDisjoint(Tensor a, Tensor b) => TensorChecks.RequireDisjoint(a, PointerOf(a), b, PointerOf(b));

    private readonly record struct Dim(uint X, uint Y = 1);

    /// <summary>A kernel argument widened to 8 bytes; ints and floats occupy the low 4 (little-endian).</summary>
    private readonly struct KernelArgument(ulong bits)
    {
        public ulong Bits { get; } = bits;

        public static implicit operator KernelArgument(ulong value) => new(value);

        public static implicit operator KernelArgument(long value) => new((ulong)value);

        public static implicit operator KernelArgument(int value) => new((uint)value);

        public static implicit operator KernelArgument(float value) => new((uint)BitConverter.SingleToInt32Bits(value));
    }

    /// <summary>Device pointers to every held expert's weights, and the layout the kernels are chosen by.</summary>
    private sealed record ExpertTable(ulong Pointer, string Suffix, int Intermediate, int ScaleType, int GroupSize, bool Vectorized);

    /// <summary>A device block that grows on demand and is reused across calls (freed in stream order when replaced).</summary>
    private sealed class Scratch(CudaBackend backend) : IDisposable
    {
        private ulong _pointer;
        private long _capacity;

        public ulong Get(long bytes)
        {
            if (bytes > _capacity)
            {
                backend.Free(_pointer);
                _capacity = Math.Max(bytes, _capacity * 2);
                _pointer = backend.AllocateRaw(_capacity);
                backend.ScratchMoves++;
            }

            return _pointer;
        }

        public void Dispose()
        {
            backend.Free(_pointer);
            _pointer = 0;
            _capacity = 0;
        }
    }
}

/// <summary>An instantiated CUDA graph captured by <see cref="CudaBackend.Capture"/>; <see cref="Launch"/> replays it.</summary>
public sealed unsafe class CudaGraph : IRecordedStep
{
    private readonly CudaBackend _backend;
    private readonly IntPtr _graph;
    private readonly IntPtr _executable;
    private readonly int _scratchMoves;

    internal CudaGraph(CudaBackend backend, IntPtr graph)
    {
        _backend = backend;
        _graph = graph;
        _scratchMoves = backend.ScratchMoves;
        IntPtr executable;
        Driver.Check(Driver.cuGraphInstantiateWithFlags(&executable, graph, 0), "cuGraphInstantiateWithFlags");
        _executable = executable;
    }

    /// <summary>Queues one replay on the backend's stream.</summary>
    public void Launch()
    {
        _backend.MakeCurrent();
        Driver.Check(Driver.cuGraphLaunch(_executable, _backend.Stream), "cuGraphLaunch");
    }

    /// <summary>
    /// False once one of the backend's scratch blocks (attention partials, GEMM splits) has grown since the capture: the
    /// graph may point at the freed block and must be captured again.
    /// </summary>
    public bool IsCurrent => _scratchMoves == _backend.ScratchMoves;

    void IRecordedStep.Replay() => Launch();

    public void Dispose()
    {
        _backend.MakeCurrent();
        _ = Driver.cuGraphExecDestroy(_executable);
        _ = Driver.cuGraphDestroy(_graph);
    }
}
