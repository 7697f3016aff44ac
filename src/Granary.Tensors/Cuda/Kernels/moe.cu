// Mixture-of-experts on the device, with no host round trip: the router's choices stay in device memory and each
// (token, slot) assignment reads its expert's weights through a table of device pointers.
// Table: per expert 9 u64 = {gate, up, down} x {weight or codes, scales, biases}; an expert not held is all zeros.
// KIND: 0 f32, 1 f16, 2 bf16 dense; 4 / 8 MLX-quantized bits.

// One thread per token: softmax, then the k largest (lowest index among equals), renormalised when asked.
extern "C" __global__ void topk_routing(const float* logits, int experts, int k, int normalize, int* indices, float* weights, int tokens)
{
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= tokens) return;
    const float* row = logits + (long long)t * experts;
    float best = NEG_INF;
    for (int e = 0; e < experts; e++) best = fmaxf(best, row[e]);
    float sum = 0.f;
    for (int e = 0; e < experts; e++) sum += expf(row[e] - best);
    u32 taken[16];
    for (int w = 0; w < 16; w++) taken[w] = 0u;
    float total = 0.f;
    for (int slot = 0; slot < k; slot++)
    {
        int chosen = -1;
        float chosen_p = 0.f;
        for (int e = 0; e < experts; e++)
        {
            if (taken[e >> 5] & (1u << (e & 31))) continue;
            float p = expf(row[e] - best) / sum;
            if (chosen < 0 || p > chosen_p) { chosen = e; chosen_p = p; }
        }

        taken[chosen >> 5] |= 1u << (chosen & 31);
        indices[(long long)t * k + slot] = chosen;
        weights[(long long)t * k + slot] = chosen_p;
        total += chosen_p;
    }

    if (normalize)
        for (int slot = 0; slot < k; slot++) weights[(long long)t * k + slot] /= total;
}

template <int KIND>
__device__ __forceinline__ float expert_row_dot(const u64* projection, int o, int in, const float* x, int scale_dtype, int group_size, int lane, bool vectorized)
{
    float acc[1] = { 0.f };
    if constexpr (KIND <= DT_BF16)
    {
        const char* row = (const char*)projection[0] + (long long)o * in * (KIND == DT_F32 ? 4 : 2);
        dense_dot<KIND, 1>(row, x, 0, in, 1, lane, vectorized, acc);
    }
    else
    {
        long long scale_row = (long long)o * (in / group_size) * (scale_dtype == DT_F32 ? 4 : 2);
        quantized_dot<KIND, 1>(
            (const u32*)projection[0] + (long long)o * (in * KIND / 32), (const char*)projection[1] + scale_row,
            (const char*)projection[2] + scale_row, scale_dtype, group_size, x, 0, in, 1, lane, acc);
    }

    return warp_sum(acc[0]);
}

// grid (ceil(inter / GEMV_WARPS), assignments): h[a, o] = silu(gate_e[o] . x_t) * (up_e[o] . x_t), e = indices[a], t = a / k.
template <int KIND>
__device__ void moe_gate_up(const u64* table, const int* indices, const float* x, float* h, int hidden, int inter, int k, int scale_dtype, int group_size, int vectorized)
{
    int a = blockIdx.y, lane = threadIdx.x & 31;
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= inter) return;
    const u64* expert = table + (long long)indices[a] * 9;
    if (expert[0] == 0ull)
    {
        if (lane == 0) h[(long long)a * inter + o] = 0.f;
        return;
    }

    const float* row = x + (long long)(a / k) * hidden;
    float g = expert_row_dot<KIND>(expert, o, hidden, row, scale_dtype, group_size, lane, vectorized != 0);
    float u = expert_row_dot<KIND>(expert + 3, o, hidden, row, scale_dtype, group_size, lane, vectorized != 0);
    if (lane == 0) h[(long long)a * inter + o] = ((1.f / (1.f + expf(-g))) * g) * u;
}

// grid (ceil(hidden / GEMV_WARPS), assignments): y[a, o] = down_e[o] . h[a].
template <int KIND>
__device__ void moe_down(const u64* table, const int* indices, const float* h, float* y, int hidden, int inter, int scale_dtype, int group_size, int vectorized)
{
    int a = blockIdx.y, lane = threadIdx.x & 31;
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= hidden) return;
    const u64* expert = table + (long long)indices[a] * 9;
    float s = expert[6] == 0ull ? 0.f
        : expert_row_dot<KIND>(expert + 6, o, inter, h + (long long)a * inter, scale_dtype, group_size, lane, vectorized != 0);
    if (lane == 0) y[(long long)a * hidden + o] = s;
}

#define MOE_KERNELS(SUFFIX, KIND) \
    extern "C" __global__ void __launch_bounds__(256) moe_gate_up_##SUFFIX(const u64* table, const int* indices, const float* x, float* h, \
        int hidden, int inter, int k, int st, int gs, int vec) { moe_gate_up<KIND>(table, indices, x, h, hidden, inter, k, st, gs, vec); } \
    extern "C" __global__ void __launch_bounds__(256) moe_down_##SUFFIX(const u64* table, const int* indices, const float* h, float* y, \
        int hidden, int inter, int st, int gs, int vec) { moe_down<KIND>(table, indices, h, y, hidden, inter, st, gs, vec); }

MOE_KERNELS(f32, DT_F32)
MOE_KERNELS(f16, DT_F16)
MOE_KERNELS(bf16, DT_BF16)
MOE_KERNELS(q4, 4)
MOE_KERNELS(q8, 8)

// out[t, c] = sum over slots s of weights[t, s] * y[t * k + s, c].
extern "C" __global__ void moe_combine(const float* y, const float* weights, float* out, int tokens, int hidden, int k)
{
    long long count = (long long)tokens * hidden;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    {
        long long t = i / hidden, c = i - t * hidden;
        float s = 0.f;
        for (int slot = 0; slot < k; slot++) s += weights[t * k + slot] * y[(t * k + slot) * hidden + c];
        out[i] = s;
    }
}
