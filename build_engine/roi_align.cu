// Fused multi-level RoIAlign: FPN level assignment, bilinear sampling and pooling of
// every RoI of a batch from four feature levels in ONE launch.
//
// Numerics are those of engines/roi_align.py (multilevel_roi_align), which is the
// reference this kernel is tested against (tests/build_engine/test_kernel_host.py):
// torchvision's LevelMapper, torchvision's roi_align sample placement and bilinear
// rule, fp32 accumulation for fp16 I/O. Read that module's docstring first.
//
// Entry points (extern "C", unmangled; TensorRT AOT argument order: inputs, extra
// int32 scalars, outputs):
//   RA_ENTRY_F32(const float*  f0..f3, const float* rois, <11 x int>, float*  out)
//   RA_ENTRY_F16(const half16* f0..f3, const float* rois, <11 x int>, half16* out)
// The names are macros: build_engine/plugin_spec.py gives every specialisation (output
// size, sampling ratio, aligned, levels, mode, source) its own pair, so the 7x7 box
// pooler and the 14x14 mask pooler never hand TensorRT two PTX modules with one name.
// Defaults: multilevel_roi_align_f32 / multilevel_roi_align_f16.
// with f_l: [N, C, H_l, W_l] NCHW for level min_level + l (stride 2**(min_level + l)),
// rois: [R, 5] float32 rows (batch_index, x1, y1, x2, y2) in input-image pixels,
// out: [R, C, S, S]; scalars: R, C, N, H_0, W_0, H_1, W_1, H_2, W_2, H_3, W_3.
// rois stay float32 in both variants (box coordinates are not rounded to half).
//
// One thread per output element (r, c, ph, pw), grid-stride loop over R*C*S*S: any grid
// size covers every output (the plugin launches a fixed grid, see plugin.py GRID_BLOCKS).
//
// Float and bool parameters are compile-time macros (TensorRT AOT kernels take only
// int32 scalars); defaults are torchvision Mask R-CNN's box pooler:
//   RA_OUTPUT_SIZE 7, RA_SAMPLING_RATIO 2 (<= 0: adaptive), RA_ALIGNED 0,
//   RA_CANONICAL_SCALE 224.0f, RA_CANONICAL_LEVEL 4, RA_MIN_LEVEL 2, RA_MAX_LEVEL 5,
//   RA_POOL_MAX 0 (1: max of the samples instead of their mean).
//
// Build modes: nvcc -ptx / NVRTC for the GPU; with -DRA_HOST, any C++ compiler builds
// the same source as a plain shared library whose entry points loop over the whole
// grid on one CPU thread (used by the parity tests; compile with -ffp-contract=off).

#ifndef RA_OUTPUT_SIZE
#define RA_OUTPUT_SIZE 7
#endif
#ifndef RA_SAMPLING_RATIO
#define RA_SAMPLING_RATIO 2
#endif
#ifndef RA_ALIGNED
#define RA_ALIGNED 0
#endif
#ifndef RA_CANONICAL_SCALE
#define RA_CANONICAL_SCALE 224.0f
#endif
#ifndef RA_CANONICAL_LEVEL
#define RA_CANONICAL_LEVEL 4
#endif
#ifndef RA_MIN_LEVEL
#define RA_MIN_LEVEL 2
#endif
#ifndef RA_MAX_LEVEL
#define RA_MAX_LEVEL 5
#endif
#ifndef RA_POOL_MAX
#define RA_POOL_MAX 0
#endif
#ifndef RA_ENTRY_F32
#define RA_ENTRY_F32 multilevel_roi_align_f32
#endif
#ifndef RA_ENTRY_F16
#define RA_ENTRY_F16 multilevel_roi_align_f16
#endif
#define RA_LEVEL_EPS 1e-6f

#if RA_MAX_LEVEL - RA_MIN_LEVEL != 3
#error "multilevel_roi_align takes exactly 4 feature levels: RA_MAX_LEVEL - RA_MIN_LEVEL must be 3"
#endif
#if RA_OUTPUT_SIZE < 1
#error "RA_OUTPUT_SIZE must be >= 1"
#endif

// ---------------------------------------------------------------------------------
// Host / device portability layer.
// ---------------------------------------------------------------------------------
#ifdef RA_HOST
#include <math.h>
#include <stdint.h>
#include <string.h>
#define __global__
#define __device__ static inline
#define RA_INLINE static inline
// One "thread" walks the whole index space.
#define RA_GRID_STRIDE_LOOP(i, n) for (long long i = 0; i < (n); ++i)
typedef uint16_t ra_half;

// IEEE binary16 <-> binary32, round to nearest even (what the GPU's cvt.rn does).
RA_INLINE float ra_half_to_float(ra_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1fu) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else {  // subnormal half: normalize
        int e = -1;
        do {
            mant <<= 1;
            ++e;
        } while ((mant & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

RA_INLINE ra_half ra_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t absx = x & 0x7fffffffu;
    if (absx >= 0x7f800000u) {  // inf or nan
        return (ra_half)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u));
    }
    if (absx >= 0x477ff000u) {  // rounds to >= 65520: overflow to inf
        return (ra_half)(sign | 0x7c00u);
    }
    if (absx < 0x38800000u) {  // below the smallest normal half: subnormal or zero
        if (absx < 0x33000000u) {  // < 2**-25: rounds to zero
            return (ra_half)sign;
        }
        uint32_t e = absx >> 23;
        uint32_t mant = (absx & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e;  // 14 + (113 - e) - 1
        uint32_t half_mant = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (half_mant & 1u))) {
            ++half_mant;
        }
        return (ra_half)(sign | half_mant);
    }
    uint32_t rounded = absx + 0xfffu + ((absx >> 13) & 1u);  // round to nearest even
    return (ra_half)(sign | ((rounded - 0x38000000u) >> 13));
}
#else
#define RA_INLINE __device__ __forceinline__
#define RA_GRID_STRIDE_LOOP(i, n)                                                    \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);    \
         i += (long long)blockDim.x * gridDim.x)
typedef unsigned short ra_half;  // raw binary16 bits: no cuda_fp16.h needed (NVRTC-safe)

RA_INLINE float ra_half_to_float(ra_half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

RA_INLINE ra_half ra_float_to_half(float f) {
    ra_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}
#endif

RA_INLINE float ra_load(const float* p) { return *p; }
RA_INLINE float ra_load(const ra_half* p) { return ra_half_to_float(*p); }
RA_INLINE void ra_store(float* p, float v) { *p = v; }
RA_INLINE void ra_store(ra_half* p, float v) { *p = ra_float_to_half(v); }

// ---------------------------------------------------------------------------------
// Per-RoI math (pure functions of floats; same operation order as the reference).
// ---------------------------------------------------------------------------------

// FPN level (0-based, 0 = RA_MIN_LEVEL) of a box in image pixels. A NaN level
// (negative area) maps to the lowest level; the reference leaves that case undefined.
RA_INLINE int ra_map_level(float x1, float y1, float x2, float y2) {
    float area = (x2 - x1) * (y2 - y1);
    float s = sqrtf(area);
    float k = floorf((float)RA_CANONICAL_LEVEL + log2f(s / RA_CANONICAL_SCALE) + RA_LEVEL_EPS);
    k = fminf(fmaxf(k, (float)RA_MIN_LEVEL), (float)RA_MAX_LEVEL);
    return (int)k - RA_MIN_LEVEL;
}

// torchvision's per-axis bilinear setup for one sample coordinate. Returns 0 when the
// sample lies outside [-1, size] (it then contributes 0 but still counts).
RA_INLINE int ra_axis(float coord, int size, int* lo, int* hi, float* w_lo, float* w_hi) {
    if (!(coord >= -1.0f && coord <= (float)size)) {
        return 0;
    }
    float c = coord < 0.0f ? 0.0f : coord;
    int l = (int)c;
    int h;
    if (l >= size - 1) {
        l = size - 1;
        h = l;
        c = (float)l;
    } else {
        h = l + 1;
    }
    *lo = l;
    *hi = h;
    *w_hi = c - (float)l;
    *w_lo = 1.0f - *w_hi;
    return 1;
}

// Sample grid size along one axis: fixed, or adaptive ceil(bin) (may be <= 0: no samples).
RA_INLINE int ra_grid(float bin) {
    return RA_SAMPLING_RATIO > 0 ? RA_SAMPLING_RATIO : (int)ceilf(bin);
}

template <typename T>
RA_INLINE void ra_multilevel_roi_align(const T* f0, const T* f1, const T* f2, const T* f3,
                                       const float* rois, int num_rois, int channels,
                                       int batch, int h0, int w0, int h1, int w1, int h2,
                                       int w2, int h3, int w3, T* out) {
    const int S = RA_OUTPUT_SIZE;
    const long long planes = (long long)num_rois * channels;
    const long long total = planes * S * S;
    const bool planes_fit_32 = planes <= 0xffffffffLL;  // then divide in 32 bits (cheaper on GPUs)
    RA_GRID_STRIDE_LOOP(idx, total) {
        const int pw = (int)(idx % S);
        const int ph = (int)((idx / S) % S);
        const long long rc = idx / (S * S);  // (roi, channel) plane index
        int c;
        long long r;
        if (planes_fit_32) {
            c = (int)((unsigned)rc % (unsigned)channels);
            r = (long long)((unsigned)rc / (unsigned)channels);
        } else {
            c = (int)(rc % channels);
            r = rc / channels;
        }
        const float* roi = rois + r * 5;
        const int b = (int)roi[0];
        if (b < 0 || b >= batch) {  // invalid batch index: defined output instead of a fault
            ra_store(out + idx, 0.0f);
            continue;
        }
        const int level = ra_map_level(roi[1], roi[2], roi[3], roi[4]);
        const T* feat = level == 0 ? f0 : level == 1 ? f1 : level == 2 ? f2 : f3;
        const int height = level == 0 ? h0 : level == 1 ? h1 : level == 2 ? h2 : h3;
        const int width = level == 0 ? w0 : level == 1 ? w1 : level == 2 ? w2 : w3;
        const float scale = 1.0f / (float)(1 << (RA_MIN_LEVEL + level));
        const float shift = RA_ALIGNED ? 0.5f : 0.0f;

        const float x1 = roi[1] * scale - shift;
        const float y1 = roi[2] * scale - shift;
        float roi_w = roi[3] * scale - shift - x1;
        float roi_h = roi[4] * scale - shift - y1;
        if (!RA_ALIGNED) {
            roi_w = fmaxf(roi_w, 1.0f);
            roi_h = fmaxf(roi_h, 1.0f);
        }
        const float bin_w = roi_w / (float)S;
        const float bin_h = roi_h / (float)S;
        const int grid_h = ra_grid(bin_h);
        const int grid_w = ra_grid(bin_w);
        const float div_h = (float)(grid_h > 1 ? grid_h : 1);
        const float div_w = (float)(grid_w > 1 ? grid_w : 1);

        const T* plane = feat + ((long long)b * channels + c) * height * width;
        float acc = 0.0f;
        int any = 0;  // max mode: whether a sample exists (adaptive grids may have none)
        for (int iy = 0; iy < grid_h; ++iy) {
            const float y = y1 + (float)ph * bin_h + ((float)iy + 0.5f) * bin_h / div_h;
            int yl = 0, yh = 0;
            float wyl = 0.0f, wyh = 0.0f;
            const int y_in = ra_axis(y, height, &yl, &yh, &wyl, &wyh);
            for (int ix = 0; ix < grid_w; ++ix) {
                const float x = x1 + (float)pw * bin_w + ((float)ix + 0.5f) * bin_w / div_w;
                int xl = 0, xh = 0;
                float wxl = 0.0f, wxh = 0.0f;
                float v = 0.0f;
                if (y_in && ra_axis(x, width, &xl, &xh, &wxl, &wxh)) {
                    const T* row_l = plane + (long long)yl * width;
                    const T* row_h = plane + (long long)yh * width;
                    v = wyl * wxl * ra_load(row_l + xl) + wyl * wxh * ra_load(row_l + xh) +
                        wyh * wxl * ra_load(row_h + xl) + wyh * wxh * ra_load(row_h + xh);
                }
                if (RA_POOL_MAX) {
                    acc = any ? fmaxf(acc, v) : v;
                    any = 1;
                } else {
                    acc += v;
                }
            }
        }
        if (!RA_POOL_MAX) {
            const int count = grid_h * grid_w;
            acc = acc / (float)(count > 1 ? count : 1);
        }
        ra_store(out + idx, acc);
    }
}

#ifdef RA_HOST
// Host-only hooks so the tests can check the binary16 conversions exhaustively.
extern "C" void ra_host_half_to_float(const ra_half* src, float* dst, long long n) {
    for (long long i = 0; i < n; ++i) dst[i] = ra_half_to_float(src[i]);
}
extern "C" void ra_host_float_to_half(const float* src, ra_half* dst, long long n) {
    for (long long i = 0; i < n; ++i) dst[i] = ra_float_to_half(src[i]);
}
#endif

extern "C" __global__ void RA_ENTRY_F32(
    const float* __restrict__ f0, const float* __restrict__ f1, const float* __restrict__ f2,
    const float* __restrict__ f3, const float* __restrict__ rois, int num_rois, int channels,
    int batch, int h0, int w0, int h1, int w1, int h2, int w2, int h3, int w3,
    float* __restrict__ out) {
    ra_multilevel_roi_align<float>(f0, f1, f2, f3, rois, num_rois, channels, batch, h0, w0, h1,
                                   w1, h2, w2, h3, w3, out);
}

extern "C" __global__ void RA_ENTRY_F16(
    const ra_half* __restrict__ f0, const ra_half* __restrict__ f1,
    const ra_half* __restrict__ f2, const ra_half* __restrict__ f3,
    const float* __restrict__ rois, int num_rois, int channels, int batch, int h0, int w0,
    int h1, int w1, int h2, int w2, int h3, int w3, ra_half* __restrict__ out) {
    ra_multilevel_roi_align<ra_half>(f0, f1, f2, f3, rois, num_rois, channels, batch, h0, w0,
                                     h1, w1, h2, w2, h3, w3, out);
}
