// CUDA kernels of the training step's elementwise parts (feature `cuda`):
// BatchNorm (+ReLU) with the batch's statistics, forward and backward, the
// residual add + ReLU and AdamW's update. candle runs each as a chain of
// broadcast ops, each a pass over the activation; here each is one or two.
// Compiled to PTX by engine/build.rs; launched from ops/cuda.rs.
//
// Activations are (n, c, inner) row-major, in f32 or bf16 (`_f32`/`_bf16`
// entry points); statistics and sums are f32 tensors, accumulated in f64.
// BatchNorm's per-channel parameters travel as one (rows, c) f32 tensor:
// row 0 the batch mean, 1 the biased variance, 2 γ, 3 β.

#include <cuda_bf16.h>

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, size_t i) {
    return __bfloat162float(p[i]);
}
__device__ __forceinline__ void store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16 *p, size_t i, float v) {
    p[i] = __float2bfloat16(v);
}

// y = scale·x + shift: the normalisation as one multiply-add. The forward
// and the backward's ReLU cut both use this, so they cut the same values.
__device__ __forceinline__ void affine(const float *params, int c, int ch, float eps,
                                       float &scale, float &shift) {
    float inv_std = rsqrtf(params[c + ch] + eps);
    scale = params[2 * c + ch] * inv_std;
    shift = params[3 * c + ch] - params[ch] * scale;
}

// The sums of a and b over the block, in thread 0. blockDim.x is a
// multiple of 32, at most 1024.
__device__ void block_sum2(double &a, double &b) {
    __shared__ double sa[32], sb[32];
    for (int o = 16; o > 0; o >>= 1) {
        a += __shfl_down_sync(0xffffffffu, a, o);
        b += __shfl_down_sync(0xffffffffu, b, o);
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        sa[warp] = a;
        sb[warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        a = lane < warps ? sa[lane] : 0.0;
        b = lane < warps ? sb[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) {
            a += __shfl_down_sync(0xffffffffu, a, o);
            b += __shfl_down_sync(0xffffffffu, b, o);
        }
    }
}

// Block (ch, split) sums one channel over its share of the images into
// partial[(split·c + ch)·2 + {0, 1}]: Σx and Σx² (GRAD false), or, with the
// output's gradient g (cut by the ReLU when `relu`), Σg and Σg·(x − mean).
template <typename T, bool GRAD>
__device__ void channel_partial(const T *x, const T *dy, const float *params, float eps,
                                int relu, int n, int c, int inner, double *partial) {
    int ch = blockIdx.x, split = blockIdx.y;
    int per = (n + gridDim.y - 1) / gridDim.y;
    int n0 = split * per, n1 = min(n, n0 + per);
    float mean = 0.f, scale = 0.f, shift = 0.f;
    if (GRAD) {
        mean = params[ch];
        affine(params, c, ch, eps, scale, shift);
    }
    double a = 0.0, b = 0.0;
    if (n0 < n1) {
        long long count = (long long)(n1 - n0) * inner;
        // Walk (image, position) without a division per element.
        int step_img = blockDim.x / inner, step_pos = blockDim.x % inner;
        int img = n0 + threadIdx.x / inner, pos = threadIdx.x % inner;
        for (long long j = threadIdx.x; j < count; j += blockDim.x) {
            size_t at = ((size_t)img * c + ch) * inner + pos;
            float v = load(x, at);
            if (GRAD) {
                float g = load(dy, at);
                if (relu && !(scale * v + shift > 0.f)) g = 0.f;
                a += g;
                b += (double)g * (double)(v - mean);
            } else {
                a += v;
                b += (double)v * v;
            }
            img += step_img;
            pos += step_pos;
            if (pos >= inner) {
                pos -= inner;
                img += 1;
            }
        }
    }
    block_sum2(a, b);
    if (threadIdx.x == 0) {
        partial[((size_t)split * c + ch) * 2] = a;
        partial[((size_t)split * c + ch) * 2 + 1] = b;
    }
}

// Channel ch's two sums over the splits of `channel_partial`.
__device__ void sum_splits(const double *partial, int splits, int c, int ch, double &a,
                           double &b) {
    a = 0.0;
    b = 0.0;
    for (int i = 0; i < splits; ++i) {
        a += partial[((size_t)i * c + ch) * 2];
        b += partial[((size_t)i * c + ch) * 2 + 1];
    }
}

// The batch's mean and biased variance per channel, from `splits` partial
// sums of `count` values: stats is (2, c).
extern "C" __global__ void bn_stats_finish(const double *partial, int splits, int c, double count,
                                float *stats) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double s, s2;
    sum_splits(partial, splits, c, ch, s, s2);
    double mean = s / count;
    double var = s2 / count - mean * mean;
    stats[ch] = (float)mean;
    stats[c + ch] = (float)(var > 0.0 ? var : 0.0);
}

// From the backward's partial sums, ext (11, c): rows 0–3 the parameters,
// 4–5 zero (the statistics take no gradient), 6 dγ, 7 dβ, and 8–10 the
// per-channel k1, k2, k3 of dx = k1·g + k2·x + k3.
extern "C" __global__ void bn_grad_finish(const double *partial, int splits, const float *params, float eps,
                               int c, double count, float *ext) {
    int ch = blockIdx.x * blockDim.x + threadIdx.x;
    if (ch >= c) return;
    double d_beta, gx;
    sum_splits(partial, splits, c, ch, d_beta, gx);
    double mean = params[ch];
    double inv_std = 1.0 / sqrt((double)params[c + ch] + eps);
    double d_gamma = gx * inv_std;
    double scale = params[2 * c + ch] * inv_std;
    double slope = -scale * inv_std * d_gamma / count;
    for (int r = 0; r < 4; ++r) ext[r * c + ch] = params[r * c + ch];
    ext[4 * c + ch] = 0.f;
    ext[5 * c + ch] = 0.f;
    ext[6 * c + ch] = (float)d_gamma;
    ext[7 * c + ch] = (float)d_beta;
    ext[8 * c + ch] = (float)scale;
    ext[9 * c + ch] = (float)slope;
    ext[10 * c + ch] = (float)(-scale * d_beta / count - slope * mean);
}

// A grid-stride loop over [0, total).
#define FOR_EACH_INDEX(i, total)                                                        \
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < (total);        \
         i += (size_t)gridDim.x * blockDim.x)

// One thread per 4 consecutive elements; when `inner` is a multiple of 4
// they share a channel and the index is divided once.
#define FOR_EACH_QUAD(total, inner, c)                                                  \
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q * 4 < (total);    \
         q += (size_t)gridDim.x * blockDim.x)                                           \
        for (int k = 0, ch0 = (int)((q * 4 / (inner)) % (c)); k < 4 && q * 4 + k < (total); ++k)

#define CHANNEL(i, ch0, inner, c) ((inner) % 4 == 0 ? (ch0) : (int)(((i) / (inner)) % (c)))

template <typename T>
__device__ void bn_forward(const T *x, const float *params, float eps, int relu, size_t total,
                           int c, int inner, T *y) {
    FOR_EACH_QUAD(total, inner, c) {
        size_t i = q * 4 + k;
        int ch = CHANNEL(i, ch0, inner, c);
        float scale, shift;
        affine(params, c, ch, eps, scale, shift);
        float v = scale * load(x, i) + shift;
        store(y, i, relu ? fmaxf(v, 0.f) : v);
    }
}

template <typename T>
__device__ void bn_backward_dx(const T *x, const T *dy, const float *ext, float eps, int relu,
                               size_t total, int c, int inner, T *dx) {
    FOR_EACH_QUAD(total, inner, c) {
        size_t i = q * 4 + k;
        int ch = CHANNEL(i, ch0, inner, c);
        float v = load(x, i), g = load(dy, i);
        if (relu) {
            float scale, shift;
            affine(ext, c, ch, eps, scale, shift);
            if (!(scale * v + shift > 0.f)) g = 0.f;
        }
        store(dx, i, ext[8 * c + ch] * g + ext[9 * c + ch] * v + ext[10 * c + ch]);
    }
}

template <typename T>
__device__ void add_relu(const T *a, const T *b, size_t total, T *y) {
    FOR_EACH_INDEX(i, total)
        store(y, i, fmaxf(load(a, i) + load(b, i), 0.f));
}

// The gradient where the output is positive, else 0.
template <typename T>
__device__ void relu_mask(const T *g, const T *y, size_t total, T *out) {
    FOR_EACH_INDEX(i, total)
        store(out, i, load(y, i) > 0.f ? load(g, i) : 0.f);
}

#define BOTH_TYPES(MACRO) MACRO(float, f32) MACRO(__nv_bfloat16, bf16)

#define ENTRY_POINTS(T, NAME)                                                                  \
    extern "C" __global__ void bn_stats_partial_##NAME(const T *x, int n, int c, int inner,     \
                                                       double *partial) {                      \
        channel_partial<T, false>(x, nullptr, nullptr, 0.f, 0, n, c, inner, partial);          \
    }                                                                                          \
    extern "C" __global__ void bn_grad_partial_##NAME(const T *x, const T *dy,                 \
                                                      const float *params, float eps,          \
                                                      int relu, int n, int c, int inner,       \
                                                      double *partial) {                       \
        channel_partial<T, true>(x, dy, params, eps, relu, n, c, inner, partial);              \
    }                                                                                          \
    extern "C" __global__ void bn_forward_##NAME(const T *x, const float *params, float eps,    \
                                                 int relu, size_t total, int c, int inner,     \
                                                 T *y) {                                       \
        bn_forward<T>(x, params, eps, relu, total, c, inner, y);                               \
    }                                                                                          \
    extern "C" __global__ void bn_backward_dx_##NAME(const T *x, const T *dy, const float *ext, \
                                                     float eps, int relu, size_t total, int c, \
                                                     int inner, T *dx) {                       \
        bn_backward_dx<T>(x, dy, ext, eps, relu, total, c, inner, dx);                         \
    }                                                                                          \
    extern "C" __global__ void add_relu_##NAME(const T *a, const T *b, size_t total, T *y) {    \
        add_relu<T>(a, b, total, y);                                                           \
    }                                                                                          \
    extern "C" __global__ void relu_mask_##NAME(const T *g, const T *y, size_t total, T *out) { \
        relu_mask<T>(g, y, total, out);                                                        \
    }

BOTH_TYPES(ENTRY_POINTS)

// AdamW on f32 parameters, in place, as ops/adamw.rs does on the CPU:
// m ← b·m + a·g (g² when `square`), then
// w ← w·keep − lr·(m·c1)/(√(v·c2) + ε).
extern "C" __global__ void adamw_moment_f32(float *m, const float *g, size_t total, float b,
                                            float a, int square) {
    FOR_EACH_INDEX(i, total) {
        float gi = g[i];
        m[i] = b * m[i] + a * (square ? gi * gi : gi);
    }
}

extern "C" __global__ void adamw_update_f32(float *w, const float *m, const float *v,
                                            size_t total, float keep, float lr, float c1,
                                            float c2, float eps) {
    FOR_EACH_INDEX(i, total)
        w[i] = w[i] * keep - lr * (m[i] * c1) / (sqrtf(v[i] * c2) + eps);
}
