// The pointwise parts of the output layer plus cross-entropy on CUDA (compiled at run time with
// NVRTC). The products run in cuBLAS; see cuda_output_loss.rs. One block of ROW_THREADS threads
// per row of logits.

#define ROW_THREADS 128

// Sum (or max) of `v` over the block; every thread gets the result.
__device__ __forceinline__ float block_reduce(float v, bool take_max, float* shared)
{
    for (int offset = 16; offset > 0; offset /= 2) {
        float other = __shfl_down_sync(0xffffffffu, v, offset);
        v = take_max ? fmaxf(v, other) : v + other;
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float r = shared[0];
    for (int w = 1; w < ROW_THREADS / 32; ++w) r = take_max ? fmaxf(r, shared[w]) : r + shared[w];
    return r;
}

// Row r of `logits` ([rows, vocab], without the bias) becomes the softmax of (logits + bias);
// row_loss[r] = -log p[target]. A target outside the vocabulary gives a NaN loss, which the
// trainer reports, instead of a read outside the row.
extern "C" __global__ void softmax_rows(
    float* logits, const float* wb, long long width, const unsigned int* targets,
    float* row_loss, int vocab)
{
    __shared__ float shared[ROW_THREADS / 32];
    long long r = blockIdx.x;
    float* row = logits + r * vocab;
    const float* bias = wb + (width - 1);
    float m = -3.402823466e+38f;
    for (int v = threadIdx.x; v < vocab; v += ROW_THREADS) {
        float l = row[v] + bias[v * width];
        row[v] = l;
        m = fmaxf(m, l);
    }
    m = block_reduce(m, true, shared);
    float s = 0.0f;
    for (int v = threadIdx.x; v < vocab; v += ROW_THREADS) s += expf(row[v] - m);
    s = block_reduce(s, false, shared);
    unsigned int target = targets[r];
    if (threadIdx.x == 0) {
        row_loss[r] = target < (unsigned int)vocab ? logf(s) + m - row[target] : __int_as_float(0x7fc00000);
    }
    __syncthreads();
    float inv = 1.0f / s;
    for (int v = threadIdx.x; v < vocab; v += ROW_THREADS) row[v] = expf(row[v] - m) * inv;
}

// out[0] = sum(values) / n, in one block, in a fixed order (so the loss does not depend on
// scheduling).
extern "C" __global__ void mean_of(const float* values, long long n, float* out)
{
    __shared__ float shared[ROW_THREADS / 32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < n; i += ROW_THREADS) acc += values[i];
    float total = block_reduce((float)acc, false, shared);
    if (threadIdx.x == 0) out[0] = total / (float)n;
}

// probs (the forward's softmax) becomes dL/dlogits = (p - onehot(target)) * grad / rows, where
// grad is the scalar gradient of the mean loss.
extern "C" __global__ void softmax_grad(
    float* probs, const unsigned int* targets, const float* grad, int rows, int vocab)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * vocab) return;
    long long r = idx / vocab;
    int v = (int)(idx % vocab);
    float p = probs[idx] - (targets[r] == (unsigned int)v ? 1.0f : 0.0f);
    probs[idx] = p * (grad[0] / (float)rows);
}
