// Matrix-vector products for decode (a few tokens): one warp per output row, 16-byte weight loads, several in flight,
// so the weight stream runs near HBM bandwidth. Activations are f32; weights f32/f16/bf16 or MLX affine-quantized.
// Tokens are processed NT at a time so each weight byte is read once per NT tokens.

#define GEMV_WARPS 4

// Weights are read once per call: stream them past L1 so the activations stay cached there.
__device__ __forceinline__ uint4 load_streaming(const uint4* p)
{
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

template <int WT>
__device__ __forceinline__ void unpack8(uint4 v, float* w)
{
    u32 words[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        if (WT == DT_BF16)
        {
            w[2 * i] = __uint_as_float(words[i] << 16);
            w[2 * i + 1] = __uint_as_float(words[i] & 0xffff0000u);
        }
        else
        {
            w[2 * i] = f16_to_f32((u16)(words[i] & 0xffffu));
            w[2 * i + 1] = f16_to_f32((u16)(words[i] >> 16));
        }
    }
}

// One 16-byte chunk c of a weight row (4 f32 or 8 f16/bf16 values) against NT activation rows.
template <int WT, int NT>
__device__ __forceinline__ void dense_chunk(uint4 v, const float* x, long long x_stride, int c, int tokens, float* acc)
{
    const int per = WT == DT_F32 ? 4 : 8;
    float w[8];
    if (WT == DT_F32)
    {
        w[0] = __uint_as_float(v.x); w[1] = __uint_as_float(v.y); w[2] = __uint_as_float(v.z); w[3] = __uint_as_float(v.w);
    }
    else
    {
        unpack8<WT>(v, w);
    }

#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        if (t < tokens)
        {
            const float4* xv = (const float4*)(x + t * x_stride + (long long)c * per);
            float4 a = xv[0];
            float s = w[0] * a.x + w[1] * a.y + w[2] * a.z + w[3] * a.w;
            if (per == 8)
            {
                float4 b = xv[1];
                s += w[4] * b.x + w[5] * b.y + w[6] * b.z + w[7] * b.w;
            }

            acc[t] += s;
        }
    }
}

// acc[t] += lane's share of row . x[t] for t < tokens (x rows x_stride floats apart). The vectorised path issues eight
// independent 16-byte weight loads per lane before using any, so enough bytes are in flight to cover HBM latency.
template <int WT, int NT>
__device__ __forceinline__ void dense_dot(const void* row, const float* x, long long x_stride, int in, int tokens, int lane, bool vectorized, float* acc)
{
    if (vectorized)
    {
        const int per = WT == DT_F32 ? 4 : 8;
        const uint4* w4 = (const uint4*)row;
        int chunks = in / per;
        int c = lane;
        for (; c + 224 < chunks; c += 256)
        {
            uint4 v[8];
#pragma unroll
            for (int u = 0; u < 8; u++) v[u] = load_streaming(w4 + c + 32 * u);
#pragma unroll
            for (int u = 0; u < 8; u++) dense_chunk<WT, NT>(v[u], x, x_stride, c + 32 * u, tokens, acc);
        }

        for (; c < chunks; c += 32) dense_chunk<WT, NT>(load_streaming(w4 + c), x, x_stride, c, tokens, acc);
    }
    else
    {
        for (int i = lane; i < in; i += 32)
        {
            float w = load_as_f32(row, i, WT);
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (t < tokens) acc[t] += w * x[t * x_stride + i];
        }
    }
}

// MLX affine quantization: each lane takes 16 bytes of codes (32 4-bit or 16 8-bit values), which lie in one group
// since groups hold at least 32 values; sum(w x) = scale * sum(q x) + bias * sum(x).
template <int BITS, int NT>
__device__ __forceinline__ void quantized_dot(
    const u32* codes, const void* scales, const void* biases, int scale_dtype, int group_size,
    const float* x, long long x_stride, int in, int tokens, int lane, float* acc)
{
    const int per = 128 / BITS;
    const u32 mask = (1u << BITS) - 1u;
    int chunks = in / per;
    const uint4* c4 = (const uint4*)codes;
#pragma unroll 2
    for (int c = lane; c < chunks; c += 32)
    {
        uint4 v = __ldg(c4 + c);
        int g = c * per / group_size;
        float scale = load_as_f32(scales, g, scale_dtype), bias = load_as_f32(biases, g, scale_dtype);
        u32 words[4] = { v.x, v.y, v.z, v.w };
        float q[per];
#pragma unroll
        for (int i = 0; i < per; i++) q[i] = (float)((words[i / (32 / BITS)] >> ((i % (32 / BITS)) * BITS)) & mask);

#pragma unroll
        for (int t = 0; t < NT; t++)
        {
            if (t < tokens)
            {
                const float4* xv = (const float4*)(x + t * x_stride + (long long)c * per);
                float qx = 0.f, sx = 0.f;
#pragma unroll
                for (int i = 0; i < per / 4; i++)
                {
                    float4 a = xv[i];
                    qx += q[4 * i] * a.x + q[4 * i + 1] * a.y + q[4 * i + 2] * a.z + q[4 * i + 3] * a.w;
                    sx += a.x + a.y + a.z + a.w;
                }

                acc[t] += scale * qx + bias * sx;
            }
        }
    }
}

template <int NT>
__device__ __forceinline__ void store_rows(float* acc, float* y, int out, int o, int token0, int tokens, const void* bias, int bias_dtype, int lane)
{
#pragma unroll
    for (int t = 0; t < NT; t++)
    {
        float s = warp_sum(acc[t]);
        if (lane == 0 && t < tokens) y[(long long)(token0 + t) * out + o] = s + (bias ? load_as_f32(bias, o, bias_dtype) : 0.f);
    }
}

// grid (ceil(out / GEMV_WARPS), ceil(n / NT)), 32 * GEMV_WARPS threads.
template <int WT, int NT>
__device__ void gemv_dense(const void* weight, const float* x, float* y, int in, int out, int n, const void* bias, int bias_dtype, int vectorized)
{
    int lane = threadIdx.x & 31;
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= out) return;
    int token0 = blockIdx.y * NT, tokens = min(NT, n - token0);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.f;
    const char* row = (const char*)weight + (long long)o * in * (WT == DT_F32 ? 4 : 2);
    dense_dot<WT, NT>(row, x + (long long)token0 * in, in, in, tokens, lane, vectorized != 0, acc);
    store_rows<NT>(acc, y, out, o, token0, tokens, bias, bias_dtype, lane);
}

template <int BITS, int NT>
__device__ void gemv_quantized(
    const u32* codes, const void* scales, const void* biases, int scale_dtype, int group_size,
    const float* x, float* y, int in, int out, int n, const void* bias, int bias_dtype)
{
    int lane = threadIdx.x & 31;
    int o = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
    if (o >= out) return;
    int token0 = blockIdx.y * NT, tokens = min(NT, n - token0);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0.f;
    long long scale_row = (long long)o * (in / group_size) * (scale_dtype == DT_F32 ? 4 : 2);
    quantized_dot<BITS, NT>(
        codes + (long long)o * (in * BITS / 32), (const char*)scales + scale_row, (const char*)biases + scale_row, scale_dtype, group_size,
        x + (long long)token0 * in, in, in, tokens, lane, acc);
    store_rows<NT>(acc, y, out, o, token0, tokens, bias, bias_dtype, lane);
}

#define DENSE_GEMV(NAME, WT, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME(const void* w, const float* x, float* y, int in, int out, int n, const void* b, int bt, int vec) \
    { gemv_dense<WT, NT>(w, x, y, in, out, n, b, bt, vec); }

DENSE_GEMV(gemv_f32_1, DT_F32, 1)
DENSE_GEMV(gemv_f32_2, DT_F32, 2)
DENSE_GEMV(gemv_f32_4, DT_F32, 4)
DENSE_GEMV(gemv_f32_8, DT_F32, 8)
DENSE_GEMV(gemv_f16_1, DT_F16, 1)
DENSE_GEMV(gemv_f16_2, DT_F16, 2)
DENSE_GEMV(gemv_f16_4, DT_F16, 4)
DENSE_GEMV(gemv_f16_8, DT_F16, 8)
DENSE_GEMV(gemv_bf16_1, DT_BF16, 1)
DENSE_GEMV(gemv_bf16_2, DT_BF16, 2)
DENSE_GEMV(gemv_bf16_4, DT_BF16, 4)
DENSE_GEMV(gemv_bf16_8, DT_BF16, 8)

#define QUANT_GEMV(NAME, BITS, NT) \
    extern "C" __global__ void __launch_bounds__(256) NAME(const u32* codes, const void* scales, const void* biases, int st, int gs, \
        const float* x, float* y, int in, int out, int n, const void* b, int bt) \
    { gemv_quantized<BITS, NT>(codes, scales, biases, st, gs, x, y, in, out, n, b, bt); }

QUANT_GEMV(gemv_q4_1, 4, 1)
QUANT_GEMV(gemv_q4_2, 4, 2)
QUANT_GEMV(gemv_q4_4, 4, 4)
QUANT_GEMV(gemv_q4_8, 4, 8)
QUANT_GEMV(gemv_q8_1, 8, 1)
QUANT_GEMV(gemv_q8_2, 8, 2)
QUANT_GEMV(gemv_q8_4, 8, 4)
QUANT_GEMV(gemv_q8_8, 8, 8)
