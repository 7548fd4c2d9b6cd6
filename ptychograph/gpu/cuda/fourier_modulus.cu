// The shared multi-mode Fourier-modulus constraint and its error terms (docs/design.md steps 3
// and 5; Dong et al., arXiv:1808.10375, eq. 4; Thibault & Menzel, Nature 494 (2013)).
// NumPy reference: ptychograph.fourier (through ptychograph.ops.NumpyOps).
//
//   modulus_constraint  in one pass per pixel: X2 = sum_m |X^m|^2 over all M = M_P * M_O modes,
//                       ratio = a / sqrt(X2) (1 at masked pixels), optionally relaxed per view
//                       as ratio <- 1 + step_j (ratio - 1), X^m *= ratio -- where that ratio is
//                       safe; elsewhere the same projection without the ratio (see
//                       constrain_extreme: finite for any finite X, all-zero X left); with a model
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

// numpy's finfo(dtype).tiny (smallest normal) and .max, and ratio_max = 2^(maxexp / 2 - 1), the
// largest ratio a / |X| eq. 4 multiplies by (ptychograph.fourier.ratio_limit): 2^63, 2^511.
template <typename R>
struct Limits;
template <>
struct Limits<float> {
    __device__ static float tiny() { return 1.17549435e-38f; }
    __device__ static float max() { return 3.40282347e38f; }
    __device__ static float ratio_max() { return 9223372036854775808.0f; }
};
template <>
struct Limits<double> {
    __device__ static double tiny() { return 2.2250738585072014e-308; }
    __device__ static double max() { return 1.7976931348623157e308; }
    __device__ static double ratio_max() { return 6.703903964971299e153; }
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

// frexp's exponent e of x (x in [2^(e-1), 2^e)) and the exact scaling x 2^e, per precision.
__device__ __forceinline__ int exponent_of(float x) {
    int e;
    frexpf(x, &e);
    return e;
}
__device__ __forceinline__ int exponent_of(double x) {
    int e;
    frexp(x, &e);
    return e;
}
__device__ __forceinline__ float scale2(float x, int e) { return ldexpf(x, e); }
__device__ __forceinline__ double scale2(double x, int e) { return ldexp(x, e); }

// Eq. 4 at one pixel where the plain ratio is unsafe: a power sum that under- or overflowed
// (denormal or huge modes) or a model negligible next to the data (a > |X| ratio_max). As
// ptychograph.fourier._constrain_extreme: Y = 2^-e X, exact, with e the exponent of
// max_m max(|Re X^m|, |Im X^m|), so |Y| is in [1/2, sqrt(2 M)]; X^m <- (a / |Y|) Y^m, relaxed as
// (1 - relax) X + relax (a / |Y|) Y. A pixel whose modes are all exactly zero is left as it is.
template <typename R, typename C>
__device__ void constrain_extreme(C* at, int n_modes, int n_pixels, R a, int has_step, R relax) {
    R largest = R(0);
    for (int m = 0; m < n_modes; ++m) {
        const C value = at[(long long)m * n_pixels];
        largest = fmax(largest, fmax(fabs(value.x), fabs(value.y)));
    }
    if (!(largest > R(0))) return;  // no phase or mode split to keep
    const int shift = -exponent_of(largest);
    R power = R(0);
    for (int m = 0; m < n_modes; ++m) {
        const C value = at[(long long)m * n_pixels];
        const R re = scale2(value.x, shift), im = scale2(value.y, shift);
        power += re * re + im * im;
    }
    const R factor = a / sqrt(power);
    for (int m = 0; m < n_modes; ++m) {
        const C value = at[(long long)m * n_pixels];
        R re = scale2(value.x, shift) * factor, im = scale2(value.y, shift) * factor;
        if (has_step) {
            re = (R(1) - relax) * value.x + relax * re;
            im = (R(1) - relax) * value.y + relax * im;
        }
        at[(long long)m * n_pixels] = cmake(re, im);
    }
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
            if (!ok) continue;  // ratio 1: a bad pixel keeps its computed amplitude
            C* at = spectrum + j * n_modes * (long long)n_pixels + p;
            const R power = mode_power<R, C>(spectrum, j, n_modes, n_pixels, p);
            const R norm = sqrt(power);
            // the conditions of ptychograph.fourier._plain_ratio_safe
            if (power >= Limits<R>::tiny() && power <= Limits<R>::max() &&
                a <= norm * Limits<R>::ratio_max()) {
                R ratio = a / norm;
                if (has_step) ratio = R(1) + relax * (ratio - R(1));
                for (int m = 0; m < n_modes; ++m) {
                    const C value = at[(long long)m * n_pixels];
                    at[(long long)m * n_pixels] = cmake(value.x * ratio, value.y * ratio);
                }
            } else {
                constrain_extreme<R, C>(at, n_modes, n_pixels, a, has_step, relax);
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
