// Probe partial sums in residual form (docs/design.md step 4; Dong et al., arXiv:1808.10375,
// eq. 5). NumPy reference: ptychograph.ops.NumpyOps.probe_partials.
//
//   probe_terms     per view, elementwise: t_j^k = sum_l conj(O_j^l) (psi_j^(k,l) - O_j^l S_j P^k)
//   sum_over_views  the reduction over views: out^k += sum_j t_j^k, or, given the sub-pixel
//                   phase ramps, out^k += sum_j t_j^k conj(ramp_y_j ramp_x_j) (S_j^H in Fourier
//                   space: the caller transforms t before and the sum after)
//   object_power    the denominator: out += sum_{j,l} |O_j^l|^2
//
// Layout (C order): psi (n, M_P, M_O, H, W); probe views (n or 1, M_P, H, W) with probe_stride
// M_P * H * W or 0; object views (n, M_O, H, W); terms (n, M_P, H, W); ramp_y (n, H) and
// ramp_x (n, W) complex, read only when has_ramps; out (M_P, H, W) complex or (H, W) real,
// accumulated into (+=). Every kernel exists as NAME_f32 (complex64) and NAME_f64 (complex128).
//
// The sums over views are conflict-free: one thread owns one output pixel and loops over the
// views in order (consecutive threads read consecutive pixels of each view), so the result is
// deterministic and needs no atomics. Launch: block (256, 1, 1); grid x covers the H * W
// pixels; grid y strides over (view, probe mode) pairs for probe_terms and over probe modes for
// sum_over_views, and is 1 for object_power.
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

template <typename C>
__device__ __forceinline__ C cmul(C a, C b) {
    return cmake(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x);
}

// conj(a) * b
template <typename C>
__device__ __forceinline__ C cmul_conj(C a, C b) {
    return cmake(a.x * b.x + a.y * b.y, a.x * b.y - a.y * b.x);
}

template <typename R, typename C>
__device__ __forceinline__ R abs2(C a) {
    return a.x * a.x + a.y * a.y;
}

template <typename R, typename C>
__device__ void probe_terms(const C* psi, const C* probe, const C* obj_views, C* terms,
                            long long probe_stride, long long n_views, int n_probe, int n_obj,
                            int n_pixels) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    for (long long jk = blockIdx.y; jk < n_views * n_probe; jk += gridDim.y) {
        const long long j = jk / n_probe;
        const int k = (int)(jk - j * n_probe);
        const C pr = probe[j * probe_stride + (long long)k * n_pixels + p];
        C sum = cmake(R(0), R(0));
        for (int l = 0; l < n_obj; ++l) {
            const C obj = obj_views[(j * n_obj + l) * n_pixels + p];
            const C model = cmul(obj, pr);
            const C wave = psi[(jk * n_obj + l) * n_pixels + p];
            const C term = cmul_conj(obj, cmake(wave.x - model.x, wave.y - model.y));
            sum = cmake(sum.x + term.x, sum.y + term.y);
        }
        terms[jk * n_pixels + p] = sum;
    }
}

template <typename R, typename C>
__device__ void sum_over_views(const C* waves, const C* ramp_y, const C* ramp_x, int has_ramps,
                               C* out, long long n_views, int n_modes, int height, int width) {
    const int n_pixels = height * width;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    const int y = p / width;
    const int x = p - y * width;
    for (int k = blockIdx.y; k < n_modes; k += gridDim.y) {
        C sum = cmake(R(0), R(0));
        for (long long j = 0; j < n_views; ++j) {
            C value = waves[(j * n_modes + k) * n_pixels + p];
            if (has_ramps) {
                const C ramp = cmul(ramp_y[j * height + y], ramp_x[j * width + x]);
                value = cmul_conj(ramp, value);
            }
            sum = cmake(sum.x + value.x, sum.y + value.y);
        }
        C* at = out + (long long)k * n_pixels + p;
        *at = cmake(at->x + sum.x, at->y + sum.y);
    }
}

template <typename R, typename C>
__device__ void object_power(const C* obj_views, R* out, long long n_views, int n_obj,
                             int n_pixels) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    R sum = R(0);
    for (long long jl = 0; jl < n_views * n_obj; ++jl) sum += abs2<R>(obj_views[jl * n_pixels + p]);
    out[p] += sum;
}

#define PTY_PROBE_KERNELS(SUFFIX, R, C)                                                         \
    extern "C" __global__ void probe_terms_##SUFFIX(                                            \
        const C* psi, const C* probe, const C* obj_views, C* terms, long long probe_stride,     \
        long long n_views, int n_probe, int n_obj, int n_pixels) {                              \
        probe_terms<R, C>(psi, probe, obj_views, terms, probe_stride, n_views, n_probe, n_obj,  \
                          n_pixels);                                                            \
    }                                                                                           \
    extern "C" __global__ void sum_over_views_##SUFFIX(                                         \
        const C* waves, const C* ramp_y, const C* ramp_x, int has_ramps, C* out,                \
        long long n_views, int n_modes, int height, int width) {                                \
        sum_over_views<R, C>(waves, ramp_y, ramp_x, has_ramps, out, n_views, n_modes, height,   \
                             width);                                                            \
    }                                                                                           \
    extern "C" __global__ void object_power_##SUFFIX(const C* obj_views, R* out,                \
                                                     long long n_views, int n_obj,              \
                                                     int n_pixels) {                            \
        object_power<R, C>(obj_views, out, n_views, n_obj, n_pixels);                          \
    }

PTY_PROBE_KERNELS(f32, float, float2)
PTY_PROBE_KERNELS(f64, double, double2)
