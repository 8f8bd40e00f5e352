// Banded local attention on CUDA (compiled at run time with NVRTC); see cuda_band_attention.rs.
// One warp (block of 32) per row (sequence b, head, position); rows are ordered (b, head, pos).
// qkv: [B, T, 3H] with q, k, v each heads x d; probs and dscores: [B, heads, T, W], indexed by
// how far back the key is. Every output element is written by exactly one warp: no atomics
// except the final bias reduction.

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

extern "C" __global__ void band_attn_fwd(
    const float* qkv, const float* bias, float* ctx, float* probs,
    int T, int hidden, int heads, int W, float scale)
{
    extern __shared__ float p[];
    long long row = blockIdx.x;
    int pos = (int)(row % T);
    int head = (int)((row / T) % heads);
    long long b = row / ((long long)T * heads);
    int d = hidden / heads, lane = threadIdx.x;
    long long width = 3LL * hidden;
    const float* q = qkv + (b * T + pos) * width + head * d;
    int reach = min(W, pos + 1);
    for (int back = 0; back < reach; ++back) {
        const float* k = qkv + (b * T + pos - back) * width + hidden + head * d;
        float s = 0.0f;
        for (int e = lane; e < d; e += 32) s += q[e] * k[e];
        s = warp_sum(s);
        if (lane == 0) p[back] = s * scale + bias[head * W + back];
    }
    __syncwarp();
    float mx = -3.402823466e38f;  // -FLT_MAX: NVRTC has no math.h constants
    for (int i = lane; i < reach; i += 32) mx = fmaxf(mx, p[i]);
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int i = lane; i < reach; i += 32) {
        float v = expf(p[i] - mx);
        p[i] = v;
        sum += v;
    }
    sum = warp_sum(sum);
    __syncwarp();
    float* pr = probs + row * W;
    for (int i = lane; i < W; i += 32) {
        float v = i < reach ? p[i] / sum : 0.0f;
        if (i < reach) p[i] = v;
        pr[i] = v;
    }
    __syncwarp();
    float* out = ctx + (b * T + pos) * hidden + head * d;
    for (int e = lane; e < d; e += 32) {
        float acc = 0.0f;
        for (int back = 0; back < reach; ++back)
            acc += p[back] * qkv[(b * T + pos - back) * width + 2 * hidden + head * d + e];
        out[e] = acc;
    }
}

// Per query row: the score gradients (dscores = p * (dp - sum p dp), dp = g . v) and dq.
extern "C" __global__ void band_attn_bwd_query(
    const float* qkv, const float* grad, const float* probs, float* dscores, float* dqkv,
    int T, int hidden, int heads, int W, float scale)
{
    extern __shared__ float ds[];
    long long row = blockIdx.x;
    int pos = (int)(row % T);
    int head = (int)((row / T) % heads);
    long long b = row / ((long long)T * heads);
    int d = hidden / heads, lane = threadIdx.x;
    long long width = 3LL * hidden;
    const float* g = grad + (b * T + pos) * hidden + head * d;
    const float* pr = probs + row * W;
    int reach = min(W, pos + 1);
    float weighted = 0.0f;
    for (int back = 0; back < reach; ++back) {
        const float* v = qkv + (b * T + pos - back) * width + 2 * hidden + head * d;
        float s = 0.0f;
        for (int e = lane; e < d; e += 32) s += g[e] * v[e];
        s = warp_sum(s);
        if (lane == 0) ds[back] = s;
        weighted += pr[back] * s;
    }
    __syncwarp();
    float* dsr = dscores + row * W;
    for (int i = lane; i < W; i += 32) {
        float v = i < reach ? pr[i] * (ds[i] - weighted) : 0.0f;
        if (i < reach) ds[i] = v;
        dsr[i] = v;
    }
    __syncwarp();
    float* dq = dqkv + (b * T + pos) * width + head * d;
    for (int e = lane; e < d; e += 32) {
        float acc = 0.0f;
        for (int back = 0; back < reach; ++back)
            acc += ds[back] * qkv[(b * T + pos - back) * width + hidden + head * d + e];
        dq[e] = acc * scale;
    }
}

// Per key row s: dk_s = scale * sum_j dscores[s + j, j] q_{s+j}, dv_s = sum_j p[s + j, j] g_{s+j}.
extern "C" __global__ void band_attn_bwd_key(
    const float* qkv, const float* grad, const float* probs, const float* dscores, float* dqkv,
    int T, int hidden, int heads, int W, float scale)
{
    long long row = blockIdx.x;
    int s = (int)(row % T);
    int head = (int)((row / T) % heads);
    long long b = row / ((long long)T * heads);
    int d = hidden / heads, lane = threadIdx.x;
    long long width = 3LL * hidden;
    long long base = row - s;  // the row of position 0 in this (b, head)
    int reach = min(W, T - s);
    float* dk = dqkv + (b * T + s) * width + hidden + head * d;
    float* dv = dqkv + (b * T + s) * width + 2 * hidden + head * d;
    for (int e = lane; e < d; e += 32) {
        float ak = 0.0f, av = 0.0f;
        for (int j = 0; j < reach; ++j) {
            long long r = (base + s + j) * W + j;
            ak += dscores[r] * qkv[(b * T + s + j) * width + head * d + e];
            av += probs[r] * grad[(b * T + s + j) * hidden + head * d + e];
        }
        dk[e] = ak * scale;
        dv[e] = av;
    }
}

// dbias[head, back] += sum over the rows (b, pos) in this block's slice of dscores.
extern "C" __global__ void band_attn_bias_grad(
    const float* dscores, float* dbias, int B, int T, int heads, int W, int rows_per_slice)
{
    int hw = blockIdx.x * blockDim.x + threadIdx.x;
    if (hw >= heads * W) return;
    int head = hw / W, back = hw % W;
    long long first = (long long)blockIdx.y * rows_per_slice;
    long long last = min(first + rows_per_slice, (long long)B * T);
    float acc = 0.0f;
    for (long long n = first; n < last; ++n) {
        long long b = n / T, pos = n % T;
        acc += dscores[((b * heads + head) * T + pos) * W + back];
    }
    atomicAdd(dbias + hw, acc);
}
