// Exit-wave kernels of one Difference Map step around the FFTs (docs/design.md steps 1, 2 and 4;
// Dong et al., arXiv:1808.10375, eqs. 2, 3 and 6). NumPy reference: ptychograph.ops.NumpyOps.
//
//   views_and_iterate           phi = (S_j P^k)(E_j O^l)  and  2 phi - psi, all modes    (eqs. 2, 3)
//   exit_wave_update            psi += beta (F^-1 F_c[2 phi - psi] - phi), phi recomputed (eq. 3)
//   update_and_object_partials  the same update, then the object partial sums of the new psi
//   object_partials             numerator[l] += E_j^H sum_k conj(S_j P^k) psi^(k,l),
//                               denominator  += E_j^H sum_k |S_j P^k|^2                (eq. 6)
//
// Layout (C order): psi, phi, iterate, projected (n, M_P, M_O, H, W); probe views
// (n or 1, M_P, H, W) -- probe_stride is M_P * H * W, or 0 for one probe shared by all views;
// object views (n, M_O, H, W); corners (n, 2) int64 (row, column); numerator (M_O, Y, X);
// denominator (Y, X). Complex numbers are float2 / double2 (re, im), like numpy's complex64 /
// complex128. Every kernel exists as NAME_f32 (complex64) and NAME_f64 (complex128).
//
// Launch: block (256, 1, 1); grid x covers the H * W pixels of a frame, grid y strides over the
// (view, object mode) pairs (or views). One thread handles one pixel of one (view, object
// mode) and loops over the probe modes, so the object view and, for the partials, the sum over
// k stay in registers and each object pixel receives one atomicAdd per view and object mode.
//
// Self-contained (no includes) so that both nvcc (CI: .ci/compile-kernels.sh) and NVRTC
// (cupy.RawModule, ptychograph/gpu/__init__.py) compile it as it is.

// ------------------------------------------------------------------------ complex helpers
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

// --------------------------------------------------------------------------- index helpers
// Offset of psi^(k,l)_j(p) in an (n, M_P, M_O, H * W) array.
__device__ __forceinline__ long long wave_at(long long j, int k, int l, int n_probe, int n_obj,
                                             int n_pixels) {
    return ((j * n_probe + k) * n_obj + l) * (long long)n_pixels;
}

// Add one view pixel's numerator (object mode l) and denominator into the object.
// The wrapper checks that every window lies inside the object; the test here only keeps a
// bad corner from writing out of bounds.
template <typename R, typename C>
__device__ __forceinline__ void scatter_pixel(C num, R den, bool with_den, const long long* corners,
                                              long long j, int l, int p, int width,
                                              long long obj_rows, long long obj_cols,
                                              C* numerator, R* denominator) {
    const int y = p / width;
    const int x = p - y * width;
    const long long row = corners[2 * j] + y;
    const long long col = corners[2 * j + 1] + x;
    if (row < 0 || row >= obj_rows || col < 0 || col >= obj_cols) return;
    const long long at = row * obj_cols + col;
    R* target = reinterpret_cast<R*>(numerator + l * obj_rows * obj_cols + at);
    atomicAdd(target, num.x);
    atomicAdd(target + 1, num.y);
    if (with_den) atomicAdd(denominator + at, den);
}

// ------------------------------------------------------------------------------ kernel bodies
template <typename R, typename C>
__device__ void views_and_iterate(const C* probe, const C* obj_views, const C* psi, C* views,
                                  C* iterate, long long probe_stride, long long n_views,
                                  int n_probe, int n_obj, int n_pixels) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    for (long long jl = blockIdx.y; jl < n_views * n_obj; jl += gridDim.y) {
        const long long j = jl / n_obj;
        const int l = (int)(jl - j * n_obj);
        const C obj = obj_views[jl * n_pixels + p];
        for (int k = 0; k < n_probe; ++k) {
            const long long at = wave_at(j, k, l, n_probe, n_obj, n_pixels) + p;
            const C phi = cmul(probe[j * probe_stride + (long long)k * n_pixels + p], obj);
            const C old = psi[at];
            views[at] = phi;
            iterate[at] = cmake(R(2) * phi.x - old.x, R(2) * phi.y - old.y);
        }
    }
}

// psi += beta (projected - phi) with phi = P O recomputed (cheaper than reading a stored phi:
// M_P + M_O instead of M_P * M_O reads per pixel). With accumulate != 0 the object partials
// of the updated psi are added to numerator / denominator (eq. 6), fused so psi is read once.
template <typename R, typename C>
__device__ void exit_wave_update(C* psi, const C* projected, const C* probe, const C* obj_views,
                                 R beta, long long probe_stride, long long n_views, int n_probe,
                                 int n_obj, int n_pixels, int accumulate, const long long* corners,
                                 C* numerator, R* denominator, int width, long long obj_rows,
                                 long long obj_cols) {
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    for (long long jl = blockIdx.y; jl < n_views * n_obj; jl += gridDim.y) {
        const long long j = jl / n_obj;
        const int l = (int)(jl - j * n_obj);
        const C obj = obj_views[jl * n_pixels + p];
        C num = cmake(R(0), R(0));
        R den = R(0);
        for (int k = 0; k < n_probe; ++k) {
            const long long at = wave_at(j, k, l, n_probe, n_obj, n_pixels) + p;
            const C pr = probe[j * probe_stride + (long long)k * n_pixels + p];
            const C phi = cmul(pr, obj);
            const C proj = projected[at];
            C wave = psi[at];
            wave = cmake(wave.x + beta * (proj.x - phi.x), wave.y + beta * (proj.y - phi.y));
            psi[at] = wave;
            if (accumulate) {
                const C term = cmul_conj(pr, wave);
                num = cmake(num.x + term.x, num.y + term.y);
                den += abs2<R>(pr);
            }
        }
        if (accumulate) {
            scatter_pixel<R, C>(num, den, l == 0, corners, j, l, p, width, obj_rows, obj_cols,
                                numerator, denominator);
        }
    }
}

template <typename R, typename C>
__device__ void object_partials(const C* psi, const C* probe, const long long* corners,
                                C* numerator, R* denominator, long long probe_stride,
                                long long n_views, int n_probe, int n_obj, int height, int width,
                                long long obj_rows, long long obj_cols) {
    const int n_pixels = height * width;
    const int p = blockIdx.x * blockDim.x + threadIdx.x;
    if (p >= n_pixels) return;
    for (long long jl = blockIdx.y; jl < n_views * n_obj; jl += gridDim.y) {
        const long long j = jl / n_obj;
        const int l = (int)(jl - j * n_obj);
        C num = cmake(R(0), R(0));
        R den = R(0);
        for (int k = 0; k < n_probe; ++k) {
            const C pr = probe[j * probe_stride + (long long)k * n_pixels + p];
            const C term = cmul_conj(pr, psi[wave_at(j, k, l, n_probe, n_obj, n_pixels) + p]);
            num = cmake(num.x + term.x, num.y + term.y);
            den += abs2<R>(pr);
        }
        scatter_pixel<R, C>(num, den, l == 0, corners, j, l, p, width, obj_rows, obj_cols,
                            numerator, denominator);
    }
}

// ---------------------------------------------------------------- entry points, per precision
#define PTY_EXIT_WAVE_KERNELS(SUFFIX, R, C)                                                     \
    extern "C" __global__ void views_and_iterate_##SUFFIX(                                      \
        const C* probe, const C* obj_views, const C* psi, C* views, C* iterate,                 \
        long long probe_stride, long long n_views, int n_probe, int n_obj, int n_pixels) {      \
        views_and_iterate<R, C>(probe, obj_views, psi, views, iterate, probe_stride, n_views,   \
                                n_probe, n_obj, n_pixels);                                      \
    }                                                                                           \
    extern "C" __global__ void exit_wave_update_##SUFFIX(                                       \
        C* psi, const C* projected, const C* probe, const C* obj_views, R beta,                 \
        long long probe_stride, long long n_views, int n_probe, int n_obj, int n_pixels) {      \
        exit_wave_update<R, C>(psi, projected, probe, obj_views, beta, probe_stride, n_views,   \
                               n_probe, n_obj, n_pixels, 0, nullptr, nullptr, nullptr, 1, 0,    \
                               0);                                                              \
    }                                                                                           \
    extern "C" __global__ void update_and_object_partials_##SUFFIX(                             \
        C* psi, const C* projected, const C* probe, const C* obj_views, R beta,                 \
        const long long* corners, C* numerator, R* denominator, long long probe_stride,         \
        long long n_views, int n_probe, int n_obj, int height, int width, long long obj_rows,   \
        long long obj_cols) {                                                                   \
        exit_wave_update<R, C>(psi, projected, probe, obj_views, beta, probe_stride, n_views,   \
                               n_probe, n_obj, height * width, 1, corners, numerator,           \
                               denominator, width, obj_rows, obj_cols);                         \
    }                                                                                           \
    extern "C" __global__ void object_partials_##SUFFIX(                                        \
        const C* psi, const C* probe, const long long* corners, C* numerator, R* denominator,   \
        long long probe_stride, long long n_views, int n_probe, int n_obj, int height,          \
        int width, long long obj_rows, long long obj_cols) {                                    \
        object_partials<R, C>(psi, probe, corners, numerator, denominator, probe_stride,        \
                              n_views, n_probe, n_obj, height, width, obj_rows, obj_cols);      \
    }

PTY_EXIT_WAVE_KERNELS(f32, float, float2)
PTY_EXIT_WAVE_KERNELS(f64, double, double2)
