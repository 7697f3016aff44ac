// Causal grouped-query attention over an f32 KV cache, split over the sequence (flash-decoding): block (row, split)
// runs an online softmax over its slice of keys with 4 warps, one key per warp at a time; a second kernel merges the
// splits. Queries are rows of q [n, heads, head_dim] at positions start..start+n-1 (start from device memory when
// start_at is given).

#define ATT_WARPS 4
#define MAX_HEAD_DIM 256
#define ATT_REGS (MAX_HEAD_DIM / 32)

extern "C" __global__ void __launch_bounds__(ATT_WARPS * 32) attention_partial(
    const float* q, const float* keys, const float* values, float* out, float* partial,
    int heads, int kv_heads, int head_dim, int start, float scale, int chunk, int splits, const int* start_at)
{
    // A graph replayed at every decode step reads the position from device memory; splits past it find no keys.
    if (start_at) start = *start_at;
    __shared__ float qs[MAX_HEAD_DIM];
    __shared__ float warp_max_score[ATT_WARPS], warp_sum_weight[ATT_WARPS];
    __shared__ float warp_acc[ATT_WARPS][MAX_HEAD_DIM];
    int row = blockIdx.x, split = blockIdx.y;
    int i = row / heads, h = row - i * heads;
    int kv = h / (heads / kv_heads);
    int last = start + i;
    int begin = split * chunk, end = min(begin + chunk, last + 1);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) qs[d] = q[(long long)row * head_dim + d];
    __syncthreads();

    long long stride = (long long)kv_heads * head_dim;
    const float* key_base = keys + (long long)kv * head_dim;
    const float* value_base = values + (long long)kv * head_dim;
    float m = NEG_INF, l = 0.f, acc[ATT_REGS];
#pragma unroll
    for (int r = 0; r < ATT_REGS; r++) acc[r] = 0.f;

    for (int j = begin + warp; j < end; j += ATT_WARPS)
    {
        // Both rows are loaded before use: one memory latency per key instead of two.
        const float* key = key_base + j * stride;
        const float* value = value_base + j * stride;
        float k_reg[ATT_REGS], v_reg[ATT_REGS];
#pragma unroll
        for (int r = 0; r < ATT_REGS; r++)
        {
            int d = lane + 32 * r;
            k_reg[r] = d < head_dim ? key[d] : 0.f;
            v_reg[r] = d < head_dim ? value[d] : 0.f;
        }

        float s = 0.f;
#pragma unroll
        for (int r = 0; r < ATT_REGS; r++)
        {
            int d = lane + 32 * r;
            if (d < head_dim) s += qs[d] * k_reg[r];
        }

        s = warp_sum(s) * scale;
        float m_new = fmaxf(m, s);
        float correction = expf(m - m_new), p = expf(s - m_new);
        l = l * correction + p;
#pragma unroll
        for (int r = 0; r < ATT_REGS; r++) acc[r] = acc[r] * correction + p * v_reg[r];

        m = m_new;
    }

    if (lane == 0)
    {
        warp_max_score[warp] = m;
        warp_sum_weight[warp] = l;
    }

#pragma unroll
    for (int r = 0; r < ATT_REGS; r++)
    {
        int d = lane + 32 * r;
        if (d < head_dim) warp_acc[warp][d] = acc[r];
    }

    __syncthreads();
    float best = NEG_INF;
    for (int w = 0; w < ATT_WARPS; w++) if (warp_sum_weight[w] > 0.f) best = fmaxf(best, warp_max_score[w]);
    float* slot = partial + ((long long)row * splits + split) * (head_dim + 2);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float total = 0.f, a = 0.f;
        for (int w = 0; w < ATT_WARPS; w++)
        {
            if (warp_sum_weight[w] > 0.f)
            {
                float f = expf(warp_max_score[w] - best);
                total += warp_sum_weight[w] * f;
                a += warp_acc[w][d] * f;
            }
        }

        if (splits == 1) out[(long long)row * head_dim + d] = a / total;
        else slot[2 + d] = a;
        if (splits > 1 && d == 0)
        {
            slot[0] = best;
            slot[1] = total;
        }
    }
}

// One block per row: merges the splits' (max, sum, weighted values).
extern "C" __global__ void attention_combine(const float* partial, float* out, int head_dim, int splits)
{
    int row = blockIdx.x;
    const float* base = partial + (long long)row * splits * (head_dim + 2);
    float best = NEG_INF;
    for (int s = 0; s < splits; s++) if (base[s * (head_dim + 2) + 1] > 0.f) best = fmaxf(best, base[s * (head_dim + 2)]);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
    {
        float total = 0.f, a = 0.f;
        for (int s = 0; s < splits; s++)
        {
            const float* slot = base + s * (head_dim + 2);
            if (slot[1] > 0.f)
            {
                float f = expf(slot[0] - best);
                total += slot[1] * f;
                a += slot[2 + d] * f;
            }
        }

        out[(long long)row * head_dim + d] = a / total;
    }
}
