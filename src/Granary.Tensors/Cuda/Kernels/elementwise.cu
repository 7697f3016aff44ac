// Row-wise and element-wise kernels on f32 activations.

// One block per row. y = x / sqrt(mean(x^2) + eps) * w, in the order the CPU backend rounds.
extern "C" __global__ void rms_norm(const float* x, const void* weight, int weight_dtype, float eps, float* y, int columns)
{
    __shared__ float scratch[32];
    const float* row = x + (long long)blockIdx.x * columns;
    float* out = y + (long long)blockIdx.x * columns;
    float sum = 0.f;
    for (int i = threadIdx.x; i < columns; i += blockDim.x) sum += row[i] * row[i];
    float inverse = 1.f / sqrtf(block_sum(sum, scratch) / columns + eps);
    for (int i = threadIdx.x; i < columns; i += blockDim.x) out[i] = (row[i] * inverse) * load_as_f32(weight, i, weight_dtype);
}

// One block per token; rotate-half rotary embedding in place. cos/sin in double of the f32 angle, as the CPU does.
extern "C" __global__ void rope(float* x, const int* positions, const float* inverse_frequency, float scaling, int heads, int head_dim)
{
    int half = head_dim >> 1;
    float position = (float)positions[blockIdx.x];
    for (int i = threadIdx.x; i < heads * half; i += blockDim.x)
    {
        int h = i / half, j = i - h * half;
        float angle = position * inverse_frequency[j];
        double s, c;
        sincos((double)angle, &s, &c);
        float cosine = (float)c * scaling, sine = (float)s * scaling;
        float* head = x + ((long long)blockIdx.x * heads + h) * head_dim;
        float first = head[j], second = head[j + half];
        head[j] = first * cosine - second * sine;
        head[j + half] = second * cosine + first * sine;
    }
}

// One block per row, in place.
extern "C" __global__ void softmax_rows(float* x, int columns)
{
    __shared__ float scratch[32];
    float* row = x + (long long)blockIdx.x * columns;
    float best = NEG_INF;
    for (int i = threadIdx.x; i < columns; i += blockDim.x) best = fmaxf(best, row[i]);
    best = block_max(best, scratch);
    float sum = 0.f;
    for (int i = threadIdx.x; i < columns; i += blockDim.x)
    {
        float e = expf(row[i] - best);
        row[i] = e;
        sum += e;
    }

    sum = block_sum(sum, scratch);
    for (int i = threadIdx.x; i < columns; i += blockDim.x) row[i] = row[i] / sum;
}

extern "C" __global__ void silu_mul(const float* gate, const float* up, float* y, long long count)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    {
        float g = gate[i];
        float sigmoid = 1.f / (1.f + expf(-g));
        y[i] = (sigmoid * g) * up[i];
    }
}

// b_columns > 0: b is one row broadcast over the rows of a.
extern "C" __global__ void add_mul(const float* a, const float* b, float* y, long long count, int b_columns, int multiply)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    {
        float right = b_columns > 0 ? b[i % b_columns] : b[i];
        y[i] = multiply ? a[i] * right : a[i] + right;
    }
}

// y[r, c] += bias[c] after a GEMM.
extern "C" __global__ void add_bias(float* y, const void* bias, int bias_dtype, long long rows, int columns)
{
    long long count = rows * columns;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
        y[i] += load_as_f32(bias, i % columns, bias_dtype);
}

// f32 -> (hi, lo) pair in bf16 (dtype 2) or f16 (dtype 1): hi + lo carries about 16 mantissa bits, so two tensor-core
// GEMMs over hi and lo give nearly f32 products against 16-bit weights.
extern "C" __global__ void split_f32(const float* x, u16* hi, u16* lo, long long count, int dtype)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    {
        float v = x[i];
        if (dtype == DT_BF16)
        {
            u16 h = f32_to_bf16(v);
            hi[i] = h;
            lo[i] = f32_to_bf16(v - bf16_to_f32(h));
        }
        else
        {
            u16 h = f32_to_f16(v);
            hi[i] = h;
            lo[i] = f32_to_f16(v - f16_to_f32(h));
        }
    }
}

// Rows of a dense table [vocab, hidden] picked by ids; an id outside the table yields NaN (callers validate ids).
extern "C" __global__ void embedding_dense(const void* table, int dtype, const int* ids, float* y, int hidden, int rows)
{
    int id = ids[blockIdx.x];
    float* out = y + (long long)blockIdx.x * hidden;
    bool valid = id >= 0 && id < rows;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
        out[i] = valid ? load_as_f32(table, (long long)id * hidden + i, dtype) : __int_as_float(0x7fc00000);
}

// Rows of an MLX-quantized table: w = scale * q + bias per group.
extern "C" __global__ void embedding_quantized(
    const u32* codes, const void* scales, const void* biases, int scale_dtype, int bits, int group_size,
    const int* ids, float* y, int hidden, int rows)
{
    int id = ids[blockIdx.x];
    float* out = y + (long long)blockIdx.x * hidden;
    bool valid = id >= 0 && id < rows;
    int per_word = 32 / bits, groups = hidden / group_size;
    u32 mask = (1u << bits) - 1u;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x)
    {
        if (!valid) { out[i] = __int_as_float(0x7fc00000); continue; }
        u32 word = codes[(long long)id * (hidden / per_word) + i / per_word];
        float q = (float)((word >> ((i % per_word) * bits)) & mask);
        long long g = (long long)id * groups + i / group_size;
        out[i] = load_as_f32(scales, g, scale_dtype) * q + load_as_f32(biases, g, scale_dtype);
    }
}

// Deterministic uniform values in [low, high) from a counter hash, written as f32/f16/bf16: weights for benchmarks
// and random test inputs made on the device.
extern "C" __global__ void fill_uniform(void* y, int dtype, long long count, float low, float high, u64 seed)
{
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
    {
        u64 z = seed + (u64)i * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        float v = low + (high - low) * ((float)(z >> 40) * (1.f / 16777216.f));
        if (dtype == DT_F32) ((float*)y)[i] = v;
        else ((u16*)y)[i] = dtype == DT_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    }
}
