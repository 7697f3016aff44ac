using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Granary.Tensors.Numerics;

namespace Granary.Tensors.Cpu;

/// <summary>
/// Compute backend on host memory: f32 activations, weights in f32/f16/bf16 or MLX affine quantization, kernels
/// vectorised with AVX-512 (Vector256 and scalar fallbacks) and parallelised over a persistent worker pool.
/// Operations run synchronously on the calling thread (helped by the pool); calls from several threads are serialised.
/// </summary>
public sealed unsafe class CpuBackend : IComputeBackend
{
    // Below this much work an operation runs on the calling thread: a fork/join costs a few microseconds.
    private const long ParallelElementThreshold = 1 << 16;

    private readonly WorkerPool _pool;
    private readonly object _sync = new();
    private readonly NativeScratch _linearScratch = new();
    private readonly NativeScratch _attentionScratch = new();
    private readonly NativeScratch _expertScratch = new();
    private readonly NativeScratch _expertTokens = new();

    /// <param name="threads">Worker threads, the caller included; defaults to <see cref="Environment.ProcessorCount"/>.</param>
    public CpuBackend(int? threads = null)
    {
        _pool = new WorkerPool(threads ?? Environment.ProcessorCount);
    }

    public string Name => "cpu";

    public DType ActivationDType => DType.F32;

    /// <summary>Threads that run each operation, the caller included.</summary>
    public int Threads => _pool.ThreadCount;

    public long AvailableMemoryBytes => ReadMemAvailable() ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;

    /// <summary>The elements of a CPU tensor, for direct reads and writes. Throws for other backends' tensors, for a
    /// <typeparamref name="T"/> whose size differs from the dtype's, and beyond int.MaxValue elements.</summary>
    public static Span<T> AsSpan<T>(Tensor tensor)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (sizeof(T) != tensor.DType.SizeInBytes())
        {
            throw new ArgumentException($"Cannot view {tensor} as {typeof(T).Name}: element sizes differ.", nameof(tensor));
        }

        if (tensor.ElementCount > int.MaxValue)
        {
            throw new ArgumentException($"{tensor} has more than int.MaxValue elements; a span cannot cover it.", nameof(tensor));
        }

        return new Span<T>(PointerOf(tensor), (int)tensor.ElementCount);
    }

    /// <summary>Address of a CPU tensor's first element.</summary>
    public static void* PointerOf(Tensor tensor)
    {
        ArgumentNullException.ThrowIfNull(tensor);
        if (tensor.Buffer is not CpuBuffer buffer)
        {
            throw new ArgumentException($"{tensor} is not a CPU tensor.", nameof(tensor));
        }

        ObjectDisposedException.ThrowIf(buffer.IsDisposed, tensor);
        return buffer.Pointer + tensor.ByteOffset;
    }

    public Tensor Allocate(DType dtype, params int[] shape)
    {
        ArgumentNullException.ThrowIfNull(shape);
        var bytes = checked(Tensor.ShapeElementCount(shape) * dtype.SizeInBytes());
        return new Tensor(CpuBuffer.Allocate(this, bytes), dtype, (int[])shape.Clone());
    }

    public Tensor Upload(ReadOnlySpan<byte> data, DType dtype, params int[] shape)
    {
        var tensor = Allocate(dtype, shape);
        if (data.Length != tensor.ByteLength)
        {
            tensor.Dispose();
            throw new ArgumentException($"Upload of {data.Length} bytes does not match {dtype}[{string.Join(", ", shape)}] ({tensor.ByteLength} bytes).", nameof(data));
        }

        data.CopyTo(new Span<byte>(PointerOf(tensor), data.Length));
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

        return new Tensor(CpuBuffer.Wrap(this, region), dtype, (int[])shape.Clone());
    }

    public void Download(Tensor source, Span<byte> destination)
    {
        if (destination.Length != source.ByteLength)
        {
            throw new ArgumentException($"Download of {source} needs {source.ByteLength} bytes, destination has {destination.Length}.", nameof(destination));
        }

        new ReadOnlySpan<byte>(PointerOf(source), destination.Length).CopyTo(destination);
    }

    public void Synchronize()
    {
    }

    public void Copy(Tensor source, Tensor destination)
    {
        TensorChecks.CopyShapes(source, destination);

        Buffer.MemoryCopy(PointerOf(source), PointerOf(destination), destination.ByteLength, source.ByteLength);
    }

    public void Embedding(LinearWeight table, Tensor ids, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(table);
        RequireDType(ids, DType.I32, nameof(ids));
        RequireF32(output, nameof(output));
        TensorChecks.EmbeddingShapes(table, ids, output);

        var idPointer = (int*)PointerOf(ids);
        var y = (float*)PointerOf(output);
        lock (_sync)
        {
            var job = CreateJob(table, null, 1, null);
            for (long t = 0; t < ids.ElementCount; t++)
            {
                var id = idPointer[t];
                if ((uint)id >= (uint)table.OutFeatures)
                {
                    throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id at index {t} is outside the embedding table of {table.OutFeatures} rows.");
                }

                var row = y + (t * table.InFeatures);
                switch (table)
                {
                    case DenseWeight dense:
                        FloatReader.ToSingle(job.Weight + ((long)id * table.InFeatures * dense.Weight.DType.SizeInBytes()), dense.Weight.DType, row, table.InFeatures);
                        break;
                    case QuantizedWeight:
                        LinearKernels.DequantizeRow(ref job, id, row);
                        break;
                }
            }
        }
    }

    public void Linear(Tensor input, LinearWeight weight, Tensor output)
    {
        RequireLinear(input, weight, output);
        lock (_sync)
        {
            LinearCore((float*)PointerOf(input), input.Rows, weight, (float*)PointerOf(output));
        }
    }

    public void Linears(Tensor input, ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        TensorChecks.LinearsCount(weights, outputs);
        for (var i = 0; i < weights.Length; i++)
        {
            RequireLinear(input, weights[i], outputs[i]);
        }

        lock (_sync)
        {
            var x = (float*)PointerOf(input);
            if (input.Rows == 1 && SharesDecodeInput(weights))
            {
                LinearGroupCore(x, weights, outputs);
                return;
            }

            for (var i = 0; i < weights.Length; i++)
            {
                LinearCore(x, input.Rows, weights[i], (float*)PointerOf(outputs[i]));
            }
        }
    }

    public void RmsNorm(Tensor input, Tensor weight, float epsilon, Tensor output)
    {
        RequireF32(input, nameof(input));
        RequireF32(output, nameof(output));
        RequireSameShape(input, output);
        if (!weight.DType.IsFloatingPoint() || weight.ElementCount != input.Columns)
        {
            throw new ArgumentException($"RmsNorm weight {weight} must be a floating-point vector of {input.Columns} elements for input {input}.", nameof(weight));
        }

        var columns = input.Columns;
        var normWeight = ThreadScratch.Floats(3, columns);
        FloatReader.ToSingle((byte*)PointerOf(weight), weight.DType, normWeight, columns);
        var job = new RowJob
        {
            Input = (float*)PointerOf(input),
            Output = (float*)PointerOf(output),
            Columns = columns,
            Rows = input.Rows,
            Vector = normWeight,
            Scalar = epsilon,
        };
        RunRows(ref job, &RmsNormRows);
    }

    public void Rope(Tensor x, Tensor positions, Tensor inverseFrequency, float attentionScaling)
    {
        RequireF32(x, nameof(x));
        RequireDType(positions, DType.I32, nameof(positions));
        RequireF32(inverseFrequency, nameof(inverseFrequency));
        TensorChecks.RopeShapes(x, positions, inverseFrequency);

        var job = new RopeJob
        {
            X = (float*)PointerOf(x),
            Positions = (int*)PointerOf(positions),
            InverseFrequency = (float*)PointerOf(inverseFrequency),
            Heads = x.Dim(1),
            HeadDim = x.Dim(2),
            Scaling = attentionScaling,
        };
        var tokens = x.Dim(0);
        if (x.ElementCount < ParallelElementThreshold)
        {
            for (var t = 0; t < tokens; t++)
            {
                RopeToken(&job, t);
            }
        }
        else
        {
            lock (_sync)
            {
                _pool.Run(tokens, &RopeToken, &job);
            }
        }
    }

    public void Softmax(Tensor x)
    {
        RequireF32(x, nameof(x));
        var job = new RowJob { Input = (float*)PointerOf(x), Output = (float*)PointerOf(x), Columns = x.Columns, Rows = x.Rows };
        RunRows(ref job, &SoftmaxRows);
    }

    public void SiluMul(Tensor gate, Tensor up, Tensor output)
    {
        RequireF32(gate, nameof(gate));
        RequireF32(up, nameof(up));
        RequireF32(output, nameof(output));
        RequireSameShape(gate, up);
        RequireSameShape(gate, output);
        SiluMulCore((float*)PointerOf(gate), (float*)PointerOf(up), (float*)PointerOf(output), gate.ElementCount);
    }

    public void Add(Tensor a, Tensor b, Tensor output) => Binary(a, b, output, add: true);

    public void Mul(Tensor a, Tensor b, Tensor output) => Binary(a, b, output, add: false);

    public void Attention(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, float scale, Tensor output)
    {
        RequireF32(query, nameof(query));
        RequireF32(keyCache, nameof(keyCache));
        RequireF32(valueCache, nameof(valueCache));
        RequireF32(output, nameof(output));
        var (n, heads, headDim, kvHeads) = TensorChecks.AttentionShapes(query, keyCache, valueCache, startPosition, output);

        var job = new AttentionJob
        {
            Query = (float*)PointerOf(query),
            Keys = (float*)PointerOf(keyCache),
            Values = (float*)PointerOf(valueCache),
            Output = (float*)PointerOf(output),
            Heads = heads,
            KvHeads = kvHeads,
            HeadDim = headDim,
            StartPosition = startPosition,
            Scale = scale,
            Splits = AttentionKernel.Splits(n, kvHeads, _pool.ThreadCount, startPosition + 1),
        };
        lock (_sync)
        {
            if (job.Splits == 1)
            {
                _pool.Run(checked(n * kvHeads), &AttentionKernel.Run, &job);
                return;
            }

            job.Partials = (float*)_attentionScratch.Get(4 * AttentionKernel.PartialFloats(heads, job.Splits, headDim));
            _pool.Run(kvHeads * job.Splits, &AttentionKernel.RunRange, &job);
            AttentionKernel.MergeRanges(ref job);
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

        var logits = (float*)PointerOf(routerLogits);
        var chosen = (int*)PointerOf(indices);
        var chosenWeights = (float*)PointerOf(weights);
        var probabilities = ThreadScratch.Floats(3, experts);
        for (long t = 0; t < tokens; t++)
        {
            Buffer.MemoryCopy(logits + (t * experts), probabilities, experts * 4L, experts * 4L);
            SoftmaxRow(probabilities, experts);
            var sum = 0f;
            for (var slot = 0; slot < k; slot++)
            {
                // Strict comparison: among equal probabilities the lowest expert index wins, as torch.topk does on CPU.
                var best = -1;
                for (var e = 0; e < experts; e++)
                {
                    if (probabilities[e] >= 0 && (best < 0 || probabilities[e] > probabilities[best]))
                    {
                        best = e;
                    }
                }

                chosen[(t * k) + slot] = best;
                chosenWeights[(t * k) + slot] = probabilities[best];
                sum += probabilities[best];
                probabilities[best] = -1;
            }

            if (normalizeTopK)
            {
                for (var slot = 0; slot < k; slot++)
                {
                    chosenWeights[(t * k) + slot] /= sum;
                }
            }
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
        var tokens = input.Rows;
        var hidden = input.Columns;
        var k = indices.Columns;
        if (indices.Rows != tokens || weights.Rows != tokens || weights.Columns != k)
        {
            throw new ArgumentException($"Routing indices {indices} and weights {weights} must be [{tokens}, k] for input {input}.");
        }

        var inter = 0;
        for (var e = 0; e < experts.Count; e++)
        {
            if (experts[e] is { } expert)
            {
                if (expert.Gate.InFeatures != hidden || expert.Up.InFeatures != hidden || expert.Down.OutFeatures != hidden
                    || expert.Up.OutFeatures != expert.Gate.OutFeatures || expert.Down.InFeatures != expert.Gate.OutFeatures)
                {
                    throw new ArgumentException($"Expert {e} has gate [{expert.Gate.OutFeatures}, {expert.Gate.InFeatures}], up [{expert.Up.OutFeatures}, {expert.Up.InFeatures}], down [{expert.Down.OutFeatures}, {expert.Down.InFeatures}]; expected hidden size {hidden}.");
                }

                inter = Math.Max(inter, expert.Gate.OutFeatures);
            }
        }

        var chosen = (int*)PointerOf(indices);
        var routeWeights = (float*)PointerOf(weights);
        var assignments = tokens * k;
        for (long a = 0; a < assignments; a++)
        {
            if ((uint)chosen[a] >= (uint)experts.Count)
            {
                throw new ArgumentOutOfRangeException(nameof(indices), chosen[a], $"Expert index at {a} is outside the {experts.Count} experts.");
            }
        }

        lock (_sync)
        {
            // Bucket the (token, slot) assignments by expert so each expert's weights are streamed once per call.
            var counts = (long*)_expertTokens.Get((experts.Count + 1) * 8L + (assignments * 8L));
            var order = counts + experts.Count + 1;
            new Span<long>(counts, experts.Count + 1).Clear();
            for (long a = 0; a < assignments; a++)
            {
                counts[chosen[a] + 1]++;
            }

            for (var e = 0; e < experts.Count; e++)
            {
                counts[e + 1] += counts[e];
            }

            for (long a = 0; a < assignments; a++)
            {
                order[counts[chosen[a]]++] = a;
            }

            // counts[e] is now the end of expert e's bucket; its start is counts[e - 1] (0 for the first).
            long largest = 0;
            for (var e = 0; e < experts.Count; e++)
            {
                largest = Math.Max(largest, counts[e] - (e == 0 ? 0 : counts[e - 1]));
            }

            var accumulator = (float*)_expertScratch.Get(4 * ((tokens * hidden) + (largest * ((2L * hidden) + (2L * inter)))));
            var gathered = accumulator + (tokens * hidden);
            var gate = gathered + (largest * hidden);
            var up = gate + (largest * inter);
            var down = up + (largest * inter);
            NativeMemory.Clear(accumulator, (nuint)(tokens * hidden * 4));
            var x = (float*)PointerOf(input);
            for (var e = 0; e < experts.Count; e++)
            {
                var start = e == 0 ? 0 : counts[e - 1];
                var m = counts[e] - start;
                if (m == 0 || experts[e] is not { } expert)
                {
                    continue;
                }

                var width = expert.Gate.OutFeatures;
                for (long r = 0; r < m; r++)
                {
                    var token = order[start + r] / k;
                    Buffer.MemoryCopy(x + (token * hidden), gathered + (r * hidden), hidden * 4L, hidden * 4L);
                }

                LinearCore(gathered, m, expert.Gate, gate);
                LinearCore(gathered, m, expert.Up, up);
                SiluMulCore(gate, up, gate, m * width);
                LinearCore(gate, m, expert.Down, down);
                for (long r = 0; r < m; r++)
                {
                    var assignment = order[start + r];
                    DenseKernels.MultiplyAdd(down + (r * hidden), routeWeights[assignment], accumulator + (assignment / k * hidden), hidden);
                }
            }

            Buffer.MemoryCopy(accumulator, PointerOf(output), output.ByteLength, output.ByteLength);
        }
    }

    public void Dispose()
    {
        _pool.Dispose();
        _linearScratch.Dispose();
        _attentionScratch.Dispose();
        _expertScratch.Dispose();
        _expertTokens.Dispose();
    }

    private void LinearCore(float* x, long tokens, LinearWeight weight, float* y)
    {
        if (tokens == 0)
        {
            return;
        }

        var job = CreateJob(weight, x, tokens, y);
        var kernel = tokens == 1 ? PrepareDecode(ref job, weight, x, null) : PreparePrefill(ref job, weight, x, tokens);
        _pool.Run(job.Items, kernel, &job);
    }

    /// <summary>
    /// One-token linear layers of one input, all reading one preparation of it (<see cref="SharesDecodeInput"/>), as one
    /// parallel pass: the rows of all the weights are split over the threads together, so the pass pays one fork/join
    /// and the threads stream from one weight into the next without waiting.
    /// </summary>
    private void LinearGroupCore(float* x, ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        var count = weights.Length;
        var jobs = stackalloc LinearJob[count];
        var kernels = stackalloc nint[count];
        var firstItems = stackalloc int[count + 1];
        firstItems[0] = 0;
        for (var i = 0; i < count; i++)
        {
            jobs[i] = CreateJob(weights[i], x, 1, (float*)PointerOf(outputs[i]));
            kernels[i] = (nint)PrepareDecode(ref jobs[i], weights[i], x, i == 0 ? null : jobs);
            firstItems[i + 1] = firstItems[i] + jobs[i].Items;
        }

        var group = new LinearGroupJob { Jobs = jobs, Kernels = kernels, FirstItems = firstItems };
        _pool.Run(firstItems[count], &LinearKernels.GroupItem, &group);
    }

    /// <summary>
    /// Whether there are several weights and their one-token kernels all read the same preparation of the input: all
    /// dense f32, all dense f16/bf16 (deinterleaved), or all quantized with one bit width and group size.
    /// </summary>
    private static bool SharesDecodeInput(ReadOnlySpan<LinearWeight> weights)
    {
        for (var i = 1; i < weights.Length; i++)
        {
            var shared = (weights[0], weights[i]) switch
            {
                (QuantizedWeight a, QuantizedWeight b) => a.Bits == b.Bits && a.GroupSize == b.GroupSize,
                (DenseWeight a, DenseWeight b) => (a.Weight.DType == DType.F32) == (b.Weight.DType == DType.F32),
                _ => false,
            };
            if (!shared)
            {
                return false;
            }
        }

        return weights.Length > 1;
    }

    /// <summary>
    /// Fills in the one-token kernel's arguments and returns the kernel; the input's preparation is made here, or taken
    /// from <paramref name="prepared"/> (a job of the same input that <see cref="SharesDecodeInput"/> matched).
    /// </summary>
    private delegate*<void*, int, void> PrepareDecode(ref LinearJob job, LinearWeight weight, float* x, LinearJob* prepared)
    {
        var rowBytes = weight.WeightBytes / Math.Max(1, weight.OutFeatures);
        if (weight is QuantizedWeight quantized)
        {
            var packed = quantized.CpuDecodeLayout;
            SetRowsPerItem(ref job, LinearKernels.DecodeRows(rowBytes, packed is null ? 4 : PackedQuantizedRows.PairRows));
            job.QuantizedInput = prepared is not null
                ? prepared->QuantizedInput
                : QuantizedKernels.PrepareInput(
                    x,
                    weight.InFeatures,
                    quantized.Bits,
                    quantized.GroupSize,
                    _linearScratch.Get(QuantizedKernels.PreparedInputBytes(weight.InFeatures, quantized.Bits, quantized.GroupSize)));
            if (packed is not null)
            {
                job.PackedCodes = packed.Codes;
                job.PackedScalesAndBiases = packed.ScalesAndBiases;
                job.BlockCodeBytes = packed.BlockCodeBytes;
                job.BlockScaleBytes = packed.BlockScaleBytes;
            }

            return (quantized.Scales.DType, packed is null) switch
            {
                (DType.F32, true) => &LinearKernels.QuantizedDecode<F32Loader>,
                (DType.BF16, true) => &LinearKernels.QuantizedDecode<BFloat16Loader>,
                (_, true) => &LinearKernels.QuantizedDecode<HalfLoader>,
                (DType.F32, false) => &LinearKernels.PackedDecode<F32Loader>,
                (DType.BF16, false) => &LinearKernels.PackedDecode<BFloat16Loader>,
                _ => &LinearKernels.PackedDecode<HalfLoader>,
            };
        }

        SetRowsPerItem(ref job, LinearKernels.DecodeRows(rowBytes, 4));
        var dtype = ((DenseWeight)weight).Weight.DType;
        if (dtype != DType.F32 && Avx512F.IsSupported)
        {
            if (prepared is not null)
            {
                job.PreparedInput = prepared->PreparedInput;
            }
            else
            {
                job.PreparedInput = (float*)_linearScratch.Get(4L * weight.InFeatures);
                DenseKernels.DeinterleavePairs(x, weight.InFeatures, job.PreparedInput);
            }
        }

        return dtype switch
        {
            DType.F32 => &LinearKernels.DenseDecode<F32Loader>,
            DType.BF16 => &LinearKernels.DenseDecode<BFloat16Loader>,
            _ => &LinearKernels.DenseDecode<HalfLoader>,
        };
    }

    private delegate*<void*, int, void> PreparePrefill(ref LinearJob job, LinearWeight weight, float* x, long tokens)
    {
        SetRowsPerItem(ref job, LinearKernels.TileRows(weight.InFeatures));
        if (weight is QuantizedWeight quantized)
        {
            if (QuantizedKernels.UsesFixedPoint(quantized.Bits))
            {
                // The same inputs the one-token loop sees, so a sequence's logits do not depend on its batch.
                job.Input = (float*)_linearScratch.Get(4L * tokens * weight.InFeatures);
                QuantizedKernels.RoundToFixedPoint(x, tokens * weight.InFeatures, job.Input);
            }

            return &LinearKernels.QuantizedTiled;
        }

        return ((DenseWeight)weight).Weight.DType switch
        {
            DType.F32 => &LinearKernels.DenseTiled<F32Loader>,
            DType.BF16 => &LinearKernels.DenseTiled<BFloat16Loader>,
            _ => &LinearKernels.DenseTiled<HalfLoader>,
        };
    }

    private static void SetRowsPerItem(ref LinearJob job, int rowsPerItem)
    {
        job.RowsPerItem = rowsPerItem;
        job.Items = (job.OutFeatures + rowsPerItem - 1) / rowsPerItem;
    }

    private static LinearJob CreateJob(LinearWeight weight, float* x, long tokens, float* y)
    {
        var job = new LinearJob
        {
            Input = x,
            Output = y,
            Tokens = tokens,
            InFeatures = weight.InFeatures,
            OutFeatures = weight.OutFeatures,
        };
        if (weight.Bias is { } bias)
        {
            job.Bias = (byte*)PointerOf(bias);
            job.BiasDType = bias.DType;
            if (!bias.DType.IsFloatingPoint())
            {
                throw new ArgumentException($"Linear bias {bias} must be floating point.");
            }
        }

        switch (weight)
        {
            case DenseWeight dense:
                job.Weight = (byte*)PointerOf(dense.Weight);
                break;
            case QuantizedWeight quantized:
                TensorChecks.RequireQuantizedScales(quantized);

                job.Codes = (uint*)PointerOf(quantized.Codes);
                job.Scales = (byte*)PointerOf(quantized.Scales);
                job.Biases = (byte*)PointerOf(quantized.Biases);
                job.ScaleDType = quantized.Scales.DType;
                job.Bits = quantized.Bits;
                job.GroupSize = quantized.GroupSize;
                break;
            default:
                throw new ArgumentException($"Unsupported weight type {weight.GetType().Name}.", nameof(weight));
        }

        return job;
    }

    private void RunRows(ref RowJob job, delegate*<void*, int, void> kernel)
    {
        // Split rows into items of roughly ParallelElementThreshold elements each.
        var rowsPerItem = Math.Max(1, ParallelElementThreshold / Math.Max(1, job.Columns));
        job.RowsPerItem = rowsPerItem;
        var items = (int)((job.Rows + rowsPerItem - 1) / rowsPerItem);
        fixed (RowJob* pointer = &job)
        {
            if (items <= 1)
            {
                kernel(pointer, 0);
                return;
            }

            lock (_sync)
            {
                _pool.Run(items, kernel, pointer);
            }
        }
    }

    private static void RmsNormRows(void* arguments, int item)
    {
        ref var job = ref *(RowJob*)arguments;
        var end = Math.Min(job.Rows, (item + 1) * job.RowsPerItem);
        for (var r = item * job.RowsPerItem; r < end; r++)
        {
            var input = new ReadOnlySpan<float>(job.Input + (r * job.Columns), job.Columns);
            var output = new Span<float>(job.Output + (r * job.Columns), job.Columns);
            var meanSquare = TensorPrimitives.SumOfSquares(input) / job.Columns;
            var inverseRms = 1f / MathF.Sqrt(meanSquare + job.Scalar);
            TensorPrimitives.Multiply(input, inverseRms, output);
            TensorPrimitives.Multiply(output, new ReadOnlySpan<float>(job.Vector, job.Columns), output);
        }
    }

    private static void SoftmaxRows(void* arguments, int item)
    {
        ref var job = ref *(RowJob*)arguments;
        var end = Math.Min(job.Rows, (item + 1) * job.RowsPerItem);
        for (var r = item * job.RowsPerItem; r < end; r++)
        {
            SoftmaxRow(job.Output + (r * job.Columns), job.Columns);
        }
    }

    private static void SoftmaxRow(float* row, int length)
    {
        var span = new Span<float>(row, length);
        var max = TensorPrimitives.Max(span);
        TensorPrimitives.Subtract(span, max, span);
        TensorPrimitives.Exp(span, span);
        TensorPrimitives.Divide(span, TensorPrimitives.Sum(span), span);
    }

    private static void RopeToken(void* arguments, int token)
    {
        ref var job = ref *(RopeJob*)arguments;
        var half = job.HeadDim / 2;
        var table = RopeAngles.For(job.Positions[token], job.InverseFrequency, half, job.Scaling);
        fixed (float* cos = table)
        {
            var sin = cos + half;
            for (var h = 0; h < job.Heads; h++)
            {
                var head = job.X + ((((long)token * job.Heads) + h) * job.HeadDim);
                var j = 0;

                // Products and difference rounded one by one (no fused multiply-add), as the scalar loop and torch do.
                for (; Vector512.IsHardwareAccelerated && j + 16 <= half; j += 16)
                {
                    var (first, second) = (Vector512.Load(head + j), Vector512.Load(head + j + half));
                    var (c, s) = (Vector512.Load(cos + j), Vector512.Load(sin + j));
                    ((first * c) - (second * s)).Store(head + j);
                    ((second * c) + (first * s)).Store(head + j + half);
                }

                for (; j < half; j++)
                {
                    var first = head[j];
                    var second = head[j + half];
                    head[j] = (first * cos[j]) - (second * sin[j]);
                    head[j + half] = (second * cos[j]) + (first * sin[j]);
                }
            }
        }
    }

    /// <summary>
    /// The scaled cos and sin of one position's rotary angles, kept per thread: every layer's q and k of a decode step
    /// rotate by the same position with the same frequencies, so 2 × layers calls share one evaluation (128 cos and sin
    /// in double for head_dim 128, most of the call's time).
    /// </summary>
    private static class RopeAngles
    {
        [ThreadStatic]
        private static float[]? t_table;

        [ThreadStatic]
        private static int t_position;

        // A copy, not the address: a freed tensor's address may come back holding another model's frequencies.
        [ThreadStatic]
        private static float[]? t_inverseFrequency;

        [ThreadStatic]
        private static float t_scaling;

        /// <summary>cos[0..half) then sin[0..half), each times <paramref name="scaling"/>.</summary>
        public static float[] For(int position, float* inverseFrequency, int half, float scaling)
        {
            var table = t_table;
            var frequencies = new ReadOnlySpan<float>(inverseFrequency, half);
            if (table is not null && table.Length == 2 * half && t_position == position && t_scaling == scaling && frequencies.SequenceEqual(t_inverseFrequency))
            {
                return table;
            }

            if (table is null || table.Length != 2 * half)
            {
                t_table = table = new float[2 * half];
                t_inverseFrequency = new float[half];
            }

            for (var j = 0; j < half; j++)
            {
                // The angle is rounded to f32 as torch computes it; cos and sin are then evaluated in double.
                var angle = position * inverseFrequency[j];
                table[j] = (float)Math.Cos(angle) * scaling;
                table[half + j] = (float)Math.Sin(angle) * scaling;
            }

            frequencies.CopyTo(t_inverseFrequency);
            (t_position, t_scaling) = (position, scaling);
            return table;
        }
    }

    private static void SiluMulCore(float* gate, float* up, float* output, long count)
    {
        const int Chunk = 1024;
        var sigmoid = stackalloc float[Chunk];
        for (long start = 0; start < count; start += Chunk)
        {
            var length = (int)Math.Min(Chunk, count - start);
            var g = new ReadOnlySpan<float>(gate + start, length);
            var s = new Span<float>(sigmoid, length);
            TensorPrimitives.Sigmoid(g, s);
            TensorPrimitives.Multiply(s, g, s);
            TensorPrimitives.Multiply(s, new ReadOnlySpan<float>(up + start, length), new Span<float>(output + start, length));
        }
    }

    private static void Binary(Tensor a, Tensor b, Tensor output, bool add)
    {
        RequireF32(a, nameof(a));
        RequireF32(b, nameof(b));
        RequireF32(output, nameof(output));
        var broadcast = TensorChecks.BinaryShapes(a, b, output);

        var x = (float*)PointerOf(a);
        var y = (float*)PointerOf(b);
        var z = (float*)PointerOf(output);
        var columns = a.Columns;
        var rowLength = broadcast ? columns : (int)Math.Min(a.ElementCount, 1 << 30);
        for (long start = 0; start < a.ElementCount; start += rowLength)
        {
            var length = (int)Math.Min(rowLength, a.ElementCount - start);
            var left = new ReadOnlySpan<float>(x + start, length);
            var right = new ReadOnlySpan<float>(broadcast ? y : y + start, length);
            var destination = new Span<float>(z + start, length);
            if (add)
            {
                TensorPrimitives.Add(left, right, destination);
            }
            else
            {
                TensorPrimitives.Multiply(left, right, destination);
            }
        }
    }

    private static void RequireF32(Tensor t, string name) => RequireDType(t, DType.F32, name);

    private static void RequireDType(Tensor t, DType dtype, string name) => TensorChecks.RequireDType<CpuBuffer>(t, dtype, name, "CPU");

    private static void RequireSameShape(Tensor a, Tensor b) => TensorChecks.RequireSameShape(a, b);

    private static void RequireLinear(Tensor input, LinearWeight weight, Tensor output)
    {
        ArgumentNullException.ThrowIfNull(weight);
        RequireF32(input, nameof(input));
        RequireF32(output, nameof(output));
        TensorChecks.LinearShapes(input, weight, output);
        RequireDisjoint(input, output);
    }

    private static void RequireDisjoint(Tensor a, Tensor b) => TensorChecks.RequireDisjoint(a, (ulong)PointerOf(a), b, (ulong)PointerOf(b));

    private static long? ReadMemAvailable()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
            {
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                {
                    var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    return long.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }

        return null;
    }

    private struct RowJob
    {
        public float* Input;
        public float* Output;
        public float* Vector;
        public long Rows;
        public int Columns;
        public long RowsPerItem;
        public float Scalar;
    }

    private struct RopeJob
    {
        public float* X;
        public int* Positions;
        public float* InverseFrequency;
        public int Heads;
        public int HeadDim;
        public float Scaling;
    }

    /// <summary>A growable native block owned by the backend, for scratch used between parallel phases of one call.</summary>
    private sealed class NativeScratch : IDisposable
    {
        private void* _pointer;
        private long _capacity;

        public byte* Get(long bytes)
        {
            if (bytes > _capacity)
            {
                NativeMemory.AlignedFree(_pointer);
                _capacity = Math.Max(bytes, _capacity * 2);
                _pointer = NativeMemory.AlignedAlloc((nuint)_capacity, 64);
            }

            return (byte*)_pointer;
        }

        public void Dispose()
        {
            NativeMemory.AlignedFree(_pointer);
            _pointer = null;
            _capacity = 0;
        }
    }
}
