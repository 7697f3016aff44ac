namespace Granary.Tensors;

/// <summary>
/// A compute device: owns tensor storage and runs the operations a transformer needs on it.
/// Every operation takes tensors made by this backend and leaves its results there, so a model step
/// runs without host round trips; only <see cref="Download"/> moves data back to the host.
/// Activations are f32 on the CPU backend; a GPU backend may pick its own activation dtype through
/// <see cref="ActivationDType"/>. Weights keep their checkpoint dtype (f32, f16, bf16, MLX-quantized).
/// Operations may run asynchronously; <see cref="Synchronize"/> and <see cref="Download"/> wait.
/// </summary>
public interface IComputeBackend : IDisposable
{
    /// <summary>Short name: "cpu", "cuda", "metal".</summary>
    string Name { get; }

    /// <summary>The dtype of activations (hidden states, logits) this backend computes in.</summary>
    DType ActivationDType { get; }

    /// <summary>Bytes of memory free for weights and caches, for placement decisions.</summary>
    long AvailableMemoryBytes { get; }

    /// <summary>A new zero-filled tensor.</summary>
    Tensor Allocate(DType dtype, params int[] shape);

    /// <summary>A new tensor holding a copy of <paramref name="data"/> (raw little-endian elements).</summary>
    Tensor Upload(ReadOnlySpan<byte> data, DType dtype, params int[] shape);

    /// <summary>
    /// A tensor over host memory that outlives it (a memory-mapped checkpoint): the CPU backend uses the
    /// memory in place, a GPU backend copies it to the device.
    /// </summary>
    Tensor Map(HostRegion region, DType dtype, params int[] shape);

    /// <summary>Copies the tensor's bytes to the host, waiting for pending work.</summary>
    void Download(Tensor source, Span<byte> destination);

    /// <summary>Waits for all queued work.</summary>
    void Synchronize();

    /// <summary>destination = source (same dtype and element count; destination may be a view).</summary>
    void Copy(Tensor source, Tensor destination);

    /// <summary>Rows of <paramref name="table"/> picked by i32 <paramref name="ids"/> [n], into output [n, hidden].</summary>
    void Embedding(LinearWeight table, Tensor ids, Tensor output);

    /// <summary>output [n, out] = input [n, in] * W^T + bias.</summary>
    void Linear(Tensor input, LinearWeight weight, Tensor output);

    /// <summary>
    /// <see cref="Linear"/> of one input with each of <paramref name="weights"/> into the matching output (q, k and v of
    /// attention; gate and up of a feed-forward). A backend may run them as one pass; the results are the same.
    /// </summary>
    void Linears(Tensor input, ReadOnlySpan<LinearWeight> weights, ReadOnlySpan<Tensor> outputs)
    {
        TensorChecks.LinearsCount(weights, outputs);
        for (var i = 0; i < weights.Length; i++)
        {
            Linear(input, weights[i], outputs[i]);
        }
    }

    /// <summary>Per row of the last dimension: output = x / sqrt(mean(x^2) + eps) * weight.</summary>
    void RmsNorm(Tensor input, Tensor weight, float epsilon, Tensor output);

    /// <summary>
    /// Rotary embedding in place on x [n, heads, headDim] in the rotate-half layout, angle = position * inverseFrequency
    /// (f32 [headDim/2]), cos and sin multiplied by <paramref name="attentionScaling"/>; positions are i32 [n].
    /// </summary>
    void Rope(Tensor x, Tensor positions, Tensor inverseFrequency, float attentionScaling);

    /// <summary>Softmax over the last dimension, in place.</summary>
    void Softmax(Tensor x);

    /// <summary>output = silu(gate) * up.</summary>
    void SiluMul(Tensor gate, Tensor up, Tensor output);

    /// <summary>output = a + b (same shape, or b broadcast over rows when b is one row).</summary>
    void Add(Tensor a, Tensor b, Tensor output);

    /// <summary>output = a * b (same shape, or b broadcast over rows when b is one row).</summary>
    void Mul(Tensor a, Tensor b, Tensor output);

    /// <summary>
    /// Causal grouped-query attention for queries q [n, heads, headDim] at positions start..start+n-1 over the
    /// cached keys/values [capacity, kvHeads, headDim] holding positions 0..start+n-1; output [n, heads, headDim].
    /// heads must be a multiple of kvHeads.
    /// </summary>
    void Attention(Tensor query, Tensor keyCache, Tensor valueCache, int startPosition, float scale, Tensor output);

    /// <summary>
    /// Mixture-of-experts router: softmax over logits [n, experts], keep the top k, renormalise them when
    /// <paramref name="normalizeTopK"/>; writes i32 indices [n, k] and f32 weights [n, k].
    /// </summary>
    void TopKRouting(Tensor routerLogits, int k, bool normalizeTopK, Tensor indices, Tensor weights);

    /// <summary>
    /// output [n, hidden] = sum over the k routed experts of weight * down(silu(gate(x)) * up(x)).
    /// Experts that are null (held by another rank) contribute nothing.
    /// </summary>
    void MixtureOfExperts(Tensor input, Tensor indices, Tensor weights, IReadOnlyList<ExpertWeights?> experts, Tensor output);
}

/// <summary>One SwiGLU expert: down(silu(gate(x)) * up(x)).</summary>
public sealed record ExpertWeights(LinearWeight Gate, LinearWeight Up, LinearWeight Down);

/// <summary>A span of host memory kept alive by <see cref="Owner"/> (for example a memory-mapped file).</summary>
public readonly unsafe struct HostRegion
{
    public HostRegion(byte* pointer, long length, object owner)
    {
        Pointer = pointer;
        Length = length;
        Owner = owner;
    }

    public byte* Pointer { get; }

    public long Length { get; }

    /// <summary>Holds the memory alive for as long as a tensor refers to it.</summary>
    public object Owner { get; }
}
