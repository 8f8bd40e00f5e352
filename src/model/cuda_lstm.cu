// The pointwise parts of the fused LSTM layer on CUDA (compiled at run time with NVRTC).
// The products run in cuBLAS; see cuda_lstm.rs for the order of launches. Gate order i, f, g, o
// (PyTorch's). One thread per (sequence, hidden unit); row strides are in floats.

__device__ __forceinline__ float sigmoid_of(float x) { return 1.0f / (1.0f + expf(-x)); }

// One forward step. `gates` holds this step's pre-activations without the bias for every
// sequence (row b at gates + b * ldg); they are replaced in place by the activated gates, which
// the backward pass reads.
extern "C" __global__ void lstm_fwd_step(
    float* gates, long long ldg, const float* bias,
    const float* c_prev, long long ldcp,
    float* c_out, long long ldc,
    float* h_out, long long ldh,
    int batch, int hidden)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * hidden) return;
    long long b = idx / hidden;
    int j = (int)(idx % hidden);
    float* g = gates + b * ldg;
    float i = sigmoid_of(g[j] + bias[j]);
    float f = sigmoid_of(g[hidden + j] + bias[hidden + j]);
    float gg = tanhf(g[2 * hidden + j] + bias[2 * hidden + j]);
    float o = sigmoid_of(g[3 * hidden + j] + bias[3 * hidden + j]);
    float c = f * c_prev[b * ldcp + j] + i * gg;
    g[j] = i;
    g[hidden + j] = f;
    g[2 * hidden + j] = gg;
    g[3 * hidden + j] = o;
    c_out[b * ldc + j] = c;
    h_out[b * ldh + j] = o * tanhf(c);
}

// One backward step. In: the activated gates of the step (replaced in place by the gradients of
// the pre-activations), dL/dh_{t+1} from the layer above (`grad_h`) and from the next step's
// recurrent product (`dh_rec`, [B, H]), dL/dc_{t+1} in `dc` ([B, H], replaced by dL/dc_t).
extern "C" __global__ void lstm_bwd_step(
    float* gates, long long ldg,
    const float* grad_h, long long ldgh,
    const float* dh_rec,
    float* dc,
    const float* c, long long ldc,
    const float* c_prev, long long ldcp,
    int batch, int hidden)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * hidden) return;
    long long b = idx / hidden;
    int j = (int)(idx % hidden);
    float* g = gates + b * ldg;
    float i = g[j], f = g[hidden + j], gg = g[2 * hidden + j], o = g[3 * hidden + j];
    float tc = tanhf(c[b * ldc + j]);
    float dh = grad_h[b * ldgh + j] + dh_rec[idx];
    float dcv = dc[idx] + dh * o * (1.0f - tc * tc);
    g[j] = dcv * gg * i * (1.0f - i);
    g[hidden + j] = dcv * c_prev[b * ldcp + j] * f * (1.0f - f);
    g[2 * hidden + j] = dcv * i * (1.0f - gg * gg);
    g[3 * hidden + j] = dh * tc * o * (1.0f - o);
    dc[idx] = dcv * f;
}

// dst[r * ldd + c] = src[r * lds + c] for r < rows, c < cols.
extern "C" __global__ void copy_rows(
    float* dst, long long ldd, const float* src, long long lds, int rows, long long cols)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)rows * cols) return;
    long long r = idx / cols, c = idx % cols;
    dst[r * ldd + c] = src[r * lds + c];
}
