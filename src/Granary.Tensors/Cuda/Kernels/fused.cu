// Decode-step fusions (compiled as a second module after common.cuh and linear.cu, whose GEMV helpers they reuse):
// each replaces several kernels of the one-op-per-call path, whose launches cost about as much as the work of these
// small decode tensors. Arithmetic follows the unfused kernels operation for operation.

#define FUSED_MAX_HEAD_DIM 256

// One block per row: h += d (when d is given), then y = rmsnorm(h) * w, as add_mul followed by rms_norm.
extern "C" __global__ void add_rms_norm(float* h, const float* d, const void* weight, int weight_dtype, float eps, float* y, int columns)
{
    __shared__ float scratch[32];
    float* row = h + (long long)blockIdx.x * columns;
    const float* delta = d ? d + (long long)blockIdx.x * columns : nullptr;
    float* out = y + (long long)blockIdx.x * columns;
    float sum = 0.f;
    for (int i = threadIdx.x; i < columns; i += blockDim.x)
    {
        float v = row[i];
        if (delta)
        {
            v = v + delta[i];
            row[i] = v;
        }

        sum += v * v;
    }

    float inverse = 1.f / sqrtf(block_sum(sum, scratch) / columns + eps);
    for (int i = threadIdx.x; i < columns; i += blockDim.x) out[i] = (row[i] * inverse) * load_as_f32(weight, i, weight_dtype);
}

// grid (tokens, heads + 2 * kv_heads): one block per head of a fused q|k|v row [heads + 2 kv_heads, head_dim].
// Query and key heads get RMSNorm over the head (when a weight is given) and rotate-half rotary embedding at the
// token's position (from device memory); queries go to query [n, heads, head_dim], keys and values into the caches
// [capacity, kv_heads, head_dim] at that position.
extern "C" __global__ void qk_norm_rope_append(
    const float* qkv, int heads, int kv_heads, int head_dim,
    const void* q_norm, const void* k_norm, int norm_dtype, float eps,
    const int* positions, const float* inverse_frequency, float scaling,
    float* query, float* key_cache, float* value_cache)
{
    __shared__ float scratch[32];
    __shared__ float v[FUSED_MAX_HEAD_DIM];
    int token = blockIdx.x, h = blockIdx.y;
    const float* row = qkv + (long long)token * (heads + 2 * kv_heads) * head_dim;
    const float* source = row + (long long)h * head_dim;
    int position = positions[token];
    if (h >= heads + kv_heads)
    {
        float* target = value_cache + ((long long)position * kv_heads + (h - heads - kv_heads)) * head_dim;
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) target[d] = source[d];
        return;
    }

    bool is_query = h < heads;
    const void* norm = is_query ? q_norm : k_norm;
    float sum = 0.f;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float x = source[d];
        v[d] = x;
        sum += x * x;
    }

    if (norm)
    {
        float inverse = 1.f / sqrtf(block_sum(sum, scratch) / head_dim + eps);
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) v[d] = (v[d] * inverse) * load_as_f32(norm, d, norm_dtype);
    }

    __syncthreads();
    float* target = is_query
        ? query + ((long long)token * heads + h) * head_dim
        : key_cache + ((long long)position * kv_heads + (h - heads)) * head_dim;
    int half = head_dim >> 1;
    for (int j = threadIdx.x; j < half; j += blockDim.x)
    {
        float angle = (float)position * inverse_frequency[j];
        double s, c;
        sincos((double)angle, &s, &c);
        float cosine = (float)c * scaling, sine = (float)s * scaling;
        float first = v[j], second = v[j + half];
        target[j] = first * cosine - second * sine;
        target[j + half] = second * cosine + first * sine;
    }
}

// y[t, o] = silu(gate_o . x_t) * (up_o . x_t) for a fused [gate; up] weight of 2 * out rows: gate/up projections and
// SiLU-mul in one pass over the weight. grid (ceil(out / GEMV_WARPS), ceil(n / NT)), 32 * GEMV_WARPS threads.
template <int WT, int NT>
__device__ void gemv_swiglu(const void* weight, const float* x, float* y, int in, int out, int n, int vectorized)
{
    int lane = threadIdx.x & 31;
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= out) return;
    int token0 = blockIdx.y * NT, tokens = min(NT, n - token0);
    float gate[NT], up[NT];
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        gate[t] = 0.f;
        up[t] = 0.f;
    }

    long long row_bytes = (long long)in * (WT == DT_F32 ? 4 : 2);
    const char* gate_row = (const char*)weight + (long long)o * row_bytes;
    const char* up_row = gate_row + (long long)out * row_bytes;
    const float* xs = x + (long long)token0 * in;
    dense_dot<WT, NT>(gate_row, xs, in, in, tokens, lane, vectorized != 0, gate);
    dense_dot<WT, NT>(up_row, xs, in, in, tokens, lane, vectorized != 0, up);
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        float g = warp_sum(gate[t]), u = warp_sum(up[t]);
        if (lane == 0 && t < tokens)
        {
            float sigmoid = 1.f / (1.f + expf(-g));
            y[(long long)(token0 + t) * out + o] = (sigmoid * g) * u;
        }
    }
}

#define SWIGLU_GEMV(NAME, WT, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME(const void* w, const float* x, float* y, int in, int out, int n, int vec) \
    { gemv_swiglu<WT, NT>(w, x, y, in, out, n, vec); }

SWIGLU_GEMV(swiglu_f32_1, DT_F32, 1)
SWIGLU_GEMV(swiglu_f32_2, DT_F32, 2)
SWIGLU_GEMV(swiglu_f32_4, DT_F32, 4)
SWIGLU_GEMV(swiglu_f32_8, DT_F32, 8)
SWIGLU_GEMV(swiglu_f16_1, DT_F16, 1)
SWIGLU_GEMV(swiglu_f16_2, DT_F16, 2)
SWIGLU_GEMV(swiglu_f16_4, DT_F16, 4)
SWIGLU_GEMV(swiglu_f16_8, DT_F16, 8)
SWIGLU_GEMV(swiglu_bf16_1, DT_BF16, 1)
SWIGLU_GEMV(swiglu_bf16_2, DT_BF16, 2)
SWIGLU_GEMV(swiglu_bf16_4, DT_BF16, 4)
SWIGLU_GEMV(swiglu_bf16_8, DT_BF16, 8)

// Moves the decode positions a captured step reads on by `by`: the last node of a step replayed once per token.
extern "C" __global__ void advance_positions(int* positions, int count, int by)
{
    for (int i = threadIdx.x; i < count; i += blockDim.x) positions[i] += by;
}
