// The shared multi-mode Fourier-modulus constraint and its error terms (DESIGN.md steps 3 and 5;
// Dong et al., arXiv:1808.10375, eq. 4; Thibault & Menzel, Nature 494 (2013)).
// NumPy references: ptychograph/gpu/reference.py.
//
//   modulus_constraint  in one pass per pixel: X2 = sum_m |X^m|^2 over all M = M_P * M_O modes,
//                       ratio = a / max(sqrt(X2), tiny) (1 at masked pixels), optionally relaxed
//                       per view as ratio <- 1 + step_j (ratio - 1), X^m *= ratio; with a model
//                       spectrum F phi it also sums the Fourier error terms per view:
//                       model_residual_j += sum_good (a - |F phi|)^2, total_j += sum_good a^2
//   fourier_residuals   the per-view sums only, without writing: the iterate's residual
//                       sum_good (|X| - a)^2 (what the noise-bound relaxation needs before it
//                       can scale, hence a first pass) and the two error terms
//
// Layout (C order): spectra (n, M, H, W) complex; amplitudes a = sqrt(I) (n, H, W) real; good
// (H, W) uint8 (0 at bad pixels), read only when has_mask; step (n,) real, read only when
// has_step; per-view sums (n,) double, accumulated with one atomicAdd per block and view (the
// caller zeroes them). Spectra, amplitudes and mask share one frequency order (the package keeps
// them in FFT order, zero frequency at [0, 0]); the kernels do not care which.
// Every kernel exists as NAME_f32 (complex64 / float32) and NAME_f64 (complex128 / float64).
//
// Launch: block (256, 1, 1) -- any multiple of 32 up to 1024; grid x covers (or strides over)
// the H * W pixels, grid y strides over the views. Sums are accumulated in double.
//
// Self-contained (no includes): compiled as it is by nvcc (CI) and NVRTC (cupy.RawModule).

// Built from the members rather than make_float2 / make_double2, so NVRTC needs no header.
__device__ __forceinline__ float2 cmake(float re, float im) {
    float2 c;
    c.x = re;
    c.y = im;
    return c;
}
__device__ __forceinline__ double2 cmake(double re, double im) {
    double2 c;
    c.x = re;
    c.y = im;
    return c;
}

template <typename R, typename C>
__device__ __forceinline__ R abs2(C a) {
    return a.x * a.x + a.y * a.y;
}

// The smallest normal number, numpy's finfo(dtype).tiny: guards a / |X| where the model is 0.
template <typename R>
struct Tiny;
template <>
struct Tiny<float> {
    __device__ static float value() { return 1.17549435e-38f; }
};
template <>
struct Tiny<double> {
    __device__ static double value() { return 2.2250738585072014e-308; }
};

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    return v;
}

// Sum of v over the block, valid in thread 0. Every thread of the block must call it.
__device__ double block_sum(double v, double* shared) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();  // the previous call may still be reading shared
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = (threadIdx.x < (blockDim.x >> 5)) ? shared[threadIdx.x] : 0.0;
    return warp == 0 ? warp_sum(v) : 0.0;
}

// sum_m |spectrum^m(p)|^2 of view j.
template <typename R, typename C>
__device__ __forceinline__ R mode_power(const C* spectrum, long long j, int n_modes, int n_pixels,
                                        int p) {
    const C* at = spectrum + j * n_modes * (long long)n_pixels + p;
    R power = R(0);
    for (int m = 0; m < n_modes; ++m) power += abs2<R>(at[(long long)m * n_pixels]);
    return power;
}

template <typename R, typename C>
__device__ void fourier_residuals(const C* iterate, const C* model, const R* amplitudes,
                                  const unsigned char* good, int has_mask,
                                  double* iterate_residual, double* model_residual, double* total,
                                  long long n_views, int n_modes, int n_pixels) {
    __shared__ double shared[32];
    for (long long j = blockIdx.y; j < n_views; j += gridDim.y) {
        double acc_iterate = 0.0, acc_model = 0.0, acc_total = 0.0;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < n_pixels;
             p += gridDim.x * blockDim.x) {
            if (has_mask && !good[p]) continue;
            const R a = amplitudes[j * n_pixels + p];
            const R d_iterate = sqrt(mode_power<R, C>(iterate, j, n_modes, n_pixels, p)) - a;
            const R d_model = a - sqrt(mode_power<R, C>(model, j, n_modes, n_pixels, p));
            acc_iterate += (double)d_iterate * (double)d_iterate;
            acc_model += (double)d_model * (double)d_model;
            acc_total += (double)a * (double)a;
        }
        acc_iterate = block_sum(acc_iterate, shared);
        acc_model = block_sum(acc_model, shared);
        acc_total = block_sum(acc_total, shared);
        if (threadIdx.x == 0) {
            atomicAdd(iterate_residual + j, acc_iterate);
            atomicAdd(model_residual + j, acc_model);
            atomicAdd(total + j, acc_total);
        }
    }
}

template <typename R, typename C>
__device__ void modulus_constraint(C* spectrum, const C* model, const R* amplitudes,
                                   const unsigned char* good, const R* step, int has_model,
                                   int has_mask, int has_step, double* model_residual,
                                   double* total, long long n_views, int n_modes, int n_pixels) {
    __shared__ double shared[32];
    for (long long j = blockIdx.y; j < n_views; j += gridDim.y) {
        const R relax = has_step ? step[j] : R(1);
        double acc_model = 0.0, acc_total = 0.0;
        for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < n_pixels;
             p += gridDim.x * blockDim.x) {
            const bool ok = !has_mask || good[p];
            const R a = amplitudes[j * n_pixels + p];
            if (has_model && ok) {
                const R d_model = a - sqrt(mode_power<R, C>(model, j, n_modes, n_pixels, p));
                acc_model += (double)d_model * (double)d_model;
                acc_total += (double)a * (double)a;
            }
            const R norm = sqrt(mode_power<R, C>(spectrum, j, n_modes, n_pixels, p));
            R ratio = ok ? a / fmax(norm, Tiny<R>::value()) : R(1);
            if (has_step) ratio = R(1) + relax * (ratio - R(1));
            C* at = spectrum + j * n_modes * (long long)n_pixels + p;
            for (int m = 0; m < n_modes; ++m) {
                const C value = at[(long long)m * n_pixels];
                at[(long long)m * n_pixels] = cmake(value.x * ratio, value.y * ratio);
            }
        }
        if (has_model) {  // uniform over the block, so every thread takes part in block_sum
            acc_model = block_sum(acc_model, shared);
            acc_total = block_sum(acc_total, shared);
            if (threadIdx.x == 0) {
                atomicAdd(model_residual + j, acc_model);
                atomicAdd(total + j, acc_total);
            }
        }
    }
}

#define PTY_MODULUS_KERNELS(SUFFIX, R, C)                                                       \
    extern "C" __global__ void fourier_residuals_##SUFFIX(                                      \
        const C* iterate, const C* model, const R* amplitudes, const unsigned char* good,       \
        int has_mask, double* iterate_residual, double* model_residual, double* total,          \
        long long n_views, int n_modes, int n_pixels) {                                         \
        fourier_residuals<R, C>(iterate, model, amplitudes, good, has_mask, iterate_residual,   \
                                model_residual, total, n_views, n_modes, n_pixels);             \
    }                                                                                           \
    extern "C" __global__ void modulus_constraint_##SUFFIX(                                     \
        C* spectrum, const C* model, const R* amplitudes, const unsigned char* good,            \
        const R* step, int has_model, int has_mask, int has_step, double* model_residual,       \
        double* total, long long n_views, int n_modes, int n_pixels) {                          \
        modulus_constraint<R, C>(spectrum, model, amplitudes, good, step, has_model, has_mask,  \
                                 has_step, model_residual, total, n_views, n_modes, n_pixels);  \
    }

PTY_MODULUS_KERNELS(f32, float, float2)
PTY_MODULUS_KERNELS(f64, double, double2)
