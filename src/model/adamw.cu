// One AdamW update of a parameter on CUDA (compiled at run time with NVRTC): the arithmetic of
// optim.rs's CPU pass, in the same order. New weights and moments go to fresh buffers, so a step
// whose weights turn out not finite changes nothing.

extern "C" __global__ void adamw(
    const float* w, const float* g, const float* m, const float* v,
    float* new_w, float* new_m, float* new_v, long long n,
    float beta1, float one_minus_beta1, float beta2, float one_minus_beta2, float scale,
    float inv_correction1, float inv_correction2, float eps, float lr, float decay,
    int* not_finite)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i] * scale;
    float mi = m[i] * beta1 + gi * one_minus_beta1;
    float vi = v[i] * beta2 + (gi * gi) * one_minus_beta2;
    float denominator = sqrtf(vi * inv_correction2) + eps;
    float update = (mi * inv_correction1) / denominator;
    float wi = w[i] * decay - update * lr;
    // False for NaN and for infinities (NVRTC has no math.h for isfinite).
    if (!(fabsf(wi) <= 3.402823466e+38f)) *not_finite = 1;
    new_w[i] = wi;
    new_m[i] = mi;
    new_v[i] = vi;
}
