// Kernels the CUDA ops share (compiled at run time with NVRTC).

extern "C" __global__ void fill(float* dst, float value, long long n)
{
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx < n) dst[idx] = value;
}
