namespace Granary.Tensors;

/// <summary>
/// Optional capability of a backend: the fused operations of a one-token decode step, and recording that step once to
/// replay it at every later position. A decoder that finds it runs each layer as 9 calls instead of 20 (residual add +
/// RMSNorm, q|k|v as one projection, q/k norm + RoPE + cache append, attention, o, add + RMSNorm, gate|up + SiLU, down)
/// with the token id and position read from device memory, so one recording serves the whole generation. Backends
/// without it (the CPU backend) run the plain <see cref="IComputeBackend"/> operations; results agree to rounding.
/// </summary>
public interface IFusedDecodeBackend : IComputeBackend
{
    /// <summary>
    /// <paramref name="residual"/> += <paramref name="delta"/> (when given), then <paramref name="output"/> =
    /// RMSNorm(residual) * weight: <see cref="IComputeBackend.Add"/> and <see cref="IComputeBackend.RmsNorm"/> in one call.
    /// </summary>
    void AddRmsNorm(Tensor residual, Tensor? delta, Tensor weight, float epsilon, Tensor output);

    /// <summary>
    /// From a stacked q|k|v projection <paramref name="qkv"/> [n, (heads + 2 kvHeads) headDim]: per-head RMSNorm of
    /// queries and keys (when the norms are given), rotary embedding at i32 <paramref name="positions"/> [n] held in
    /// device memory, queries into <paramref name="query"/> [n, heads, headDim], keys and values written to the caches
    /// [capacity, kvHeads, headDim] at each token's position.
    /// </summary>
    void QkNormRopeAppend(
        Tensor qkv, Tensor? queryNorm, Tensor? keyNorm, float epsilon, Tensor positions, Tensor inverseFrequency, float attentionScaling,
        Tensor query, Tensor keyCache, Tensor valueCache);

    /// <summary>
    /// <see cref="IComputeBackend.Attention"/> with the start position read from device memory (i32
    /// <paramref name="startPosition"/>); <paramref name="positionLimit"/> bounds start + n for every replay of a recording.
    /// </summary>
    void Attention(Tensor query, Tensor keyCache, Tensor valueCache, Tensor startPosition, int positionLimit, float scale, Tensor output);

    /// <summary>output [n, inner] = silu(x Wg^T) * (x Wu^T) for gate and up stacked as one bias-free [2 inner, in] weight.</summary>
    void SwiGluLinear(Tensor input, DenseWeight gateUp, Tensor output);

    /// <summary>Copies host bytes into an existing tensor, queued with the other work (the step's token id and position).</summary>
    void Write(ReadOnlySpan<byte> data, Tensor destination);

    /// <summary>
    /// Records the work <paramref name="step"/> queues (without running it) for replay with the same arguments. The
    /// step must already have run once eagerly so every scratch buffer it uses is sized. False, with the reason in
    /// <paramref name="failure"/>, where the device cannot record it; the caller then keeps running the step eagerly.
    /// </summary>
    bool TryRecord(Action step, out IRecordedStep? recorded, out string? failure);
}

/// <summary>A step recorded by <see cref="IFusedDecodeBackend.TryRecord"/> (a CUDA graph).</summary>
public interface IRecordedStep : IDisposable
{
    /// <summary>
    /// False once the backend has moved a buffer of its own that the recording uses (a scratch block that grew for a
    /// larger call since): the step must be run eagerly once and recorded again.
    /// </summary>
    bool IsCurrent { get; }

    /// <summary>Queues one replay of the recorded work.</summary>
    void Replay();
}
