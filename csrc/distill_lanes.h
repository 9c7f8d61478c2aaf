/* distill_lanes.h: the 16-lane vocabularies the row algorithms (distill_rows.h) are written
 * in, one per path, and the float exp/log that define the result.  Included once, by
 * distill.c, after dparams and rowstats.
 *
 *   sf  scalar float: plain loops over 16 lanes -- the definition
 *   sd  scalar double: float64 input, libm exp/log
 *   vf  AVX-512: one __m512, masks as __mmask16
 *   va  AVX2: two __m256 halves, masks as vector masks
 *
 * Every op is lane-wise IEEE with no FMA (-ffp-contract=off), so vf and va equal sf bit for
 * bit; each SIMD op is written next to the scalar semantics it must match. */
#ifndef LC_DISTILL_LANES_H
#define LC_DISTILL_LANES_H

/* ------------------------------------------------------------------ exp and log (float) */
/* The definitions.  exp: Cephes expf, for x <= 88; x < -87 (and -inf) give 0, NaN stays NaN.
 * log: Cephes logf, subnormals scaled first; x <= 0 gives -inf, NaN stays NaN. */
static inline float dexpf(float x) {
    float xc = x > -87.0f ? x : -87.0f;
    xc = xc < 88.0f ? xc : 88.0f;
    float n = floorf(xc * 1.44269504088896341f + 0.5f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = (p * (r * r) + r) + 1.0f;
    float s = lc_bits_f32((uint32_t)((int32_t)n + 127) << 23);
    float res = y * s;
    res = x >= -87.0f ? res : 0.0f;
    return x != x ? x : res;
}

#define FLT_MIN_NORMAL 1.17549435e-38f
static inline float dlogf(float x) {
    int small = x < FLT_MIN_NORMAL;
    float xs = small ? x * 16777216.0f : x;
    float e0 = small ? -24.0f : 0.0f;
    uint32_t u = lc_f32_bits(xs);
    float e = (float)((int32_t)(u >> 23) - 126) + e0;
    float m = lc_bits_f32((u & 0x007fffffu) | 0x3f000000u);
    int lo = m < 0.707106781186547524f;
    e = lo ? e - 1.0f : e;
    m = lo ? (m + m) - 1.0f : m - 1.0f;
    float z = m * m;
    float y = 7.0376836292e-2f;
    y = y * m + -1.1514610310e-1f;
    y = y * m + 1.1676998740e-1f;
    y = y * m + -1.2420140846e-1f;
    y = y * m + 1.4249322787e-1f;
    y = y * m + -1.6668057665e-1f;
    y = y * m + 2.0000714765e-1f;
    y = y * m + -2.4999993993e-1f;
    y = y * m + 3.3333331174e-1f;
    y = (y * m) * z;
    y = y + e * -2.12194440e-4f;
    y = y + z * -0.5f;
    float res = m + y;
    res = res + e * 0.693359375f;
    res = x > 0.0f ? res : -INFINITY;
    return x != x ? x : res;
}

static inline float ld_f(const void *p, int code, int64_t i) {
    if (code == LC_F32) return ((const float *)p)[i];
    if (code == LC_BF16) return lc_bf16_to_f32(((const uint16_t *)p)[i]);
    return lc_f16_to_f32(((const uint16_t *)p)[i]);
}

/* ------------------------------------------------------------------ path sf: scalar float */
typedef struct { float x[16]; } vsf;
#define LANES for (int l = 0; l < 16; l++)
static inline vsf vset_sf(float c) { vsf r; LANES r.x[l] = c; return r; }
static inline vsf vload_sf(const void *p, int code, int64_t i, int n, float scale, float fill) {
    vsf r;
    LANES r.x[l] = l < n ? ld_f(p, code, i + l) * scale : fill;
    return r;
}
static inline float vload1_sf(const void *p, int code, int64_t i) { return ld_f(p, code, i); }
static inline vsf vadd_sf(vsf a, vsf b) { LANES a.x[l] = a.x[l] + b.x[l]; return a; }
static inline vsf vsub_sf(vsf a, vsf b) { LANES a.x[l] = a.x[l] - b.x[l]; return a; }
static inline vsf vmul_sf(vsf a, vsf b) { LANES a.x[l] = a.x[l] * b.x[l]; return a; }
static inline vsf vdiv_sf(vsf a, vsf b) { LANES a.x[l] = a.x[l] / b.x[l]; return a; }
static inline vsf vmax_sf(vsf a, vsf b) { LANES a.x[l] = a.x[l] > b.x[l] ? a.x[l] : b.x[l]; return a; }
static inline uint32_t veq_sf(vsf a, vsf b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] == b.x[l]) << l; return m; }
static inline uint32_t vgt_sf(vsf a, vsf b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] > b.x[l]) << l; return m; }
static inline uint32_t vlt_sf(vsf a, vsf b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] < b.x[l]) << l; return m; }
static inline vsf vsel_sf(uint32_t m, vsf a, vsf b) { LANES b.x[l] = (m >> l) & 1 ? a.x[l] : b.x[l]; return b; }
static inline vsf vexp_sf(vsf a) { LANES a.x[l] = dexpf(a.x[l]); return a; }
static inline vsf vlog_sf(vsf a) { LANES a.x[l] = dlogf(a.x[l]); return a; }
static inline float vhmax_sf(vsf a) { return hmax16f(a.x); }
static inline void vtoacc_sf(vsf a, double *acc, double scale) { LANES acc[l] = acc[l] * scale + (double)a.x[l]; }
static inline void vstore_sf(void *g, int64_t i, int n, vsf a) { for (int l = 0; l < n; l++) ((float *)g)[i + l] = a.x[l]; }
static inline float sexp_sf(float x) { return dexpf(x); }
static inline void add1_sf(void *g, int64_t i, float v) { ((float *)g)[i] = ((float *)g)[i] + v; }
static inline void set1_sf(void *g, int64_t i, float v) { ((float *)g)[i] = v; }

#define PATH sf
#define VT vsf
#define RT float
#define ATTR
#include "distill_rows.h"
#undef PATH
#undef VT
#undef RT
#undef ATTR

/* ------------------------------------------------------------------ path sd: scalar double */
typedef struct { double x[16]; } vsd;
static inline vsd vset_sd(double c) { vsd r; LANES r.x[l] = c; return r; }
static inline vsd vload_sd(const void *p, int code, int64_t i, int n, double scale, double fill) {
    vsd r;
    LANES r.x[l] = l < n ? lc_load_f64(p, code, i + l) * scale : fill;
    return r;
}
static inline double vload1_sd(const void *p, int code, int64_t i) { return lc_load_f64(p, code, i); }
static inline vsd vadd_sd(vsd a, vsd b) { LANES a.x[l] = a.x[l] + b.x[l]; return a; }
static inline vsd vsub_sd(vsd a, vsd b) { LANES a.x[l] = a.x[l] - b.x[l]; return a; }
static inline vsd vmul_sd(vsd a, vsd b) { LANES a.x[l] = a.x[l] * b.x[l]; return a; }
static inline vsd vdiv_sd(vsd a, vsd b) { LANES a.x[l] = a.x[l] / b.x[l]; return a; }
static inline vsd vmax_sd(vsd a, vsd b) { LANES a.x[l] = a.x[l] > b.x[l] ? a.x[l] : b.x[l]; return a; }
static inline uint32_t veq_sd(vsd a, vsd b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] == b.x[l]) << l; return m; }
static inline uint32_t vgt_sd(vsd a, vsd b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] > b.x[l]) << l; return m; }
static inline uint32_t vlt_sd(vsd a, vsd b) { uint32_t m = 0; LANES m |= (uint32_t)(a.x[l] < b.x[l]) << l; return m; }
static inline vsd vsel_sd(uint32_t m, vsd a, vsd b) { LANES b.x[l] = (m >> l) & 1 ? a.x[l] : b.x[l]; return b; }
static inline vsd vexp_sd(vsd a) { LANES a.x[l] = exp(a.x[l]); return a; }
static inline vsd vlog_sd(vsd a) { LANES a.x[l] = a.x[l] > 0 ? log(a.x[l]) : (a.x[l] != a.x[l] ? a.x[l] : -INFINITY); return a; }
static inline double vhmax_sd(vsd a) { return hmax16d(a.x); }
static inline void vtoacc_sd(vsd a, double *acc, double scale) { LANES acc[l] = acc[l] * scale + a.x[l]; }
static inline void vstore_sd(void *g, int64_t i, int n, vsd a) { for (int l = 0; l < n; l++) ((double *)g)[i + l] = a.x[l]; }
static inline double sexp_sd(double x) { return exp(x); }
static inline void add1_sd(void *g, int64_t i, double v) { ((double *)g)[i] = ((double *)g)[i] + v; }
static inline void set1_sd(void *g, int64_t i, double v) { ((double *)g)[i] = v; }

#define PATH sd
#define VT vsd
#define RT double
#define ATTR
#include "distill_rows.h"
#undef PATH
#undef VT
#undef RT
#undef ATTR

/* ------------------------------------------------------------------ path vf: AVX-512 float */
#ifdef LC_X86
#define VF LC_TARGET_AVX512 static inline
VF __mmask16 mask_n(int n) { return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1u); }
VF __m512 vset_vf(float c) { return _mm512_set1_ps(c); }
VF __m512 vload_vf(const void *p, int code, int64_t i, int n, float scale, float fill) {
    __mmask16 m = mask_n(n);
    __m512 x;
    if (code == LC_F32) {
        x = _mm512_maskz_loadu_ps(m, (const float *)p + i);
    } else {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
        x = code == LC_BF16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                            : _mm512_cvtph_ps(h);
    }
    x = _mm512_mul_ps(x, _mm512_set1_ps(scale));
    return _mm512_mask_blend_ps(m, _mm512_set1_ps(fill), x);
}
static inline float vload1_vf(const void *p, int code, int64_t i) { return ld_f(p, code, i); }
VF __m512 vadd_vf(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
VF __m512 vsub_vf(__m512 a, __m512 b) { return _mm512_sub_ps(a, b); }
VF __m512 vmul_vf(__m512 a, __m512 b) { return _mm512_mul_ps(a, b); }
VF __m512 vdiv_vf(__m512 a, __m512 b) { return _mm512_div_ps(a, b); }
VF __m512 vmax_vf(__m512 a, __m512 b) { return _mm512_max_ps(a, b); } /* a > b ? a : b */
VF __mmask16 veq_vf(__m512 a, __m512 b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
VF __mmask16 vgt_vf(__m512 a, __m512 b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
VF __mmask16 vlt_vf(__m512 a, __m512 b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
VF __m512 vsel_vf(__mmask16 m, __m512 a, __m512 b) { return _mm512_mask_blend_ps(m, b, a); }
VF __m512 vexp_vf(__m512 x) { /* dexpf, lane for lane */
    __m512 xc = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    xc = _mm512_min_ps(xc, _mm512_set1_ps(88.0f));
    __m512 n = _mm512_roundscale_ps(
        _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(1.44269504088896341f)), _mm512_set1_ps(0.5f)),
        _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(0.693359375f)));
    r = _mm512_sub_ps(r, _mm512_mul_ps(n, _mm512_set1_ps(-2.12194440e-4f)));
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, _mm512_mul_ps(r, r)), r),
                             _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvttps_epi32(n), _mm512_set1_epi32(127)), 23);
    __m512 res = _mm512_mul_ps(y, _mm512_castsi512_ps(e));
    res = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_GE_OQ), res);
    return _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}
VF __m512 vlog_vf(__m512 x) { /* dlogf, lane for lane */
    const __m512 one = _mm512_set1_ps(1.0f);
    __mmask16 small = _mm512_cmp_ps_mask(x, _mm512_set1_ps(FLT_MIN_NORMAL), _CMP_LT_OQ);
    __m512 xs = _mm512_mask_mul_ps(x, small, x, _mm512_set1_ps(16777216.0f));
    __m512 e0 = _mm512_maskz_mov_ps(small, _mm512_set1_ps(-24.0f));
    __m512i u = _mm512_castps_si512(xs);
    __m512 e = _mm512_add_ps(
        _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(126))), e0);
    __m512 m = _mm512_castsi512_ps(_mm512_or_si512(
        _mm512_and_si512(u, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x3f000000)));
    __mmask16 lo = _mm512_cmp_ps_mask(m, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm512_mask_sub_ps(e, lo, e, one);
    m = _mm512_sub_ps(_mm512_mask_add_ps(m, lo, m, m), one);
    __m512 z = _mm512_mul_ps(m, m);
    static const float c[9] = {7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                               -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                               2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
    __m512 y = _mm512_set1_ps(c[0]);
    for (int k = 1; k < 9; k++) y = _mm512_add_ps(_mm512_mul_ps(y, m), _mm512_set1_ps(c[k]));
    y = _mm512_mul_ps(_mm512_mul_ps(y, m), z);
    y = _mm512_add_ps(y, _mm512_mul_ps(e, _mm512_set1_ps(-2.12194440e-4f)));
    y = _mm512_add_ps(y, _mm512_mul_ps(z, _mm512_set1_ps(-0.5f)));
    __m512 res = _mm512_add_ps(m, y);
    res = _mm512_add_ps(res, _mm512_mul_ps(e, _mm512_set1_ps(0.693359375f)));
    res = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ),
                               _mm512_set1_ps(-INFINITY), res);
    return _mm512_mask_mov_ps(res, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), x);
}
VF float vhmax_vf(__m512 a) { float t[16]; _mm512_storeu_ps(t, a); return hmax16f(t); }
VF void vtoacc_vf(__m512 a, double *acc, double scale) {
    __m512d s = _mm512_set1_pd(scale);
    __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
    __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    _mm512_storeu_pd(acc, _mm512_add_pd(_mm512_mul_pd(_mm512_loadu_pd(acc), s), lo));
    _mm512_storeu_pd(acc + 8, _mm512_add_pd(_mm512_mul_pd(_mm512_loadu_pd(acc + 8), s), hi));
}
VF void vstore_vf(void *g, int64_t i, int n, __m512 a) { _mm512_mask_storeu_ps((float *)g + i, mask_n(n), a); }
static inline float sexp_vf(float x) { return dexpf(x); }
static inline void add1_vf(void *g, int64_t i, float v) { ((float *)g)[i] = ((float *)g)[i] + v; }
static inline void set1_vf(void *g, int64_t i, float v) { ((float *)g)[i] = v; }

#define PATH vf
#define VT __m512
#define RT float
#define ATTR LC_TARGET_AVX512
#include "distill_rows.h"
#undef PATH
#undef VT
#undef RT
#undef ATTR

/* ------------------------------------------------------------------ path va: AVX2 float */
/* 16 lanes as two __m256 (lanes 0-7, 8-15); masks as two vector masks. */
typedef struct { __m256 lo, hi; } vva;
typedef struct { __m256 lo, hi; } mva;
#define VA LC_TARGET_AVX2 static inline
VA vva vset_va(float c) { vva r = {_mm256_set1_ps(c), _mm256_set1_ps(c)}; return r; }
VA __m256 load8_va(const void *p, int code, int64_t i) {
    if (code == LC_F32) return _mm256_loadu_ps((const float *)p + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)p + i));
    if (code == LC_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}
VA vva vload_va(const void *p, int code, int64_t i, int n, float scale, float fill) {
    vva r;
    const __m256 sc = _mm256_set1_ps(scale);
    if (n == 16) {
        r.lo = _mm256_mul_ps(load8_va(p, code, i), sc);
        r.hi = _mm256_mul_ps(load8_va(p, code, i + 8), sc);
        return r;
    }
    float t[16];
    for (int l = 0; l < 16; l++) t[l] = l < n ? ld_f(p, code, i + l) : 0.0f;
    r.lo = _mm256_mul_ps(_mm256_loadu_ps(t), sc);
    r.hi = _mm256_mul_ps(_mm256_loadu_ps(t + 8), sc);
    _mm256_storeu_ps(t, r.lo);
    _mm256_storeu_ps(t + 8, r.hi);
    for (int l = n; l < 16; l++) t[l] = fill;
    r.lo = _mm256_loadu_ps(t);
    r.hi = _mm256_loadu_ps(t + 8);
    return r;
}
static inline float vload1_va(const void *p, int code, int64_t i) { return ld_f(p, code, i); }
#define VA_BIN(name, op) \
    VA vva name(vva a, vva b) { vva r = {op(a.lo, b.lo), op(a.hi, b.hi)}; return r; }
VA_BIN(vadd_va, _mm256_add_ps)
VA_BIN(vsub_va, _mm256_sub_ps)
VA_BIN(vmul_va, _mm256_mul_ps)
VA_BIN(vdiv_va, _mm256_div_ps)
VA_BIN(vmax_va, _mm256_max_ps) /* a > b ? a : b */
VA mva veq_va(vva a, vva b) { mva m = {_mm256_cmp_ps(a.lo, b.lo, _CMP_EQ_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_EQ_OQ)}; return m; }
VA mva vgt_va(vva a, vva b) { mva m = {_mm256_cmp_ps(a.lo, b.lo, _CMP_GT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_GT_OQ)}; return m; }
VA mva vlt_va(vva a, vva b) { mva m = {_mm256_cmp_ps(a.lo, b.lo, _CMP_LT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_LT_OQ)}; return m; }
VA vva vsel_va(mva m, vva a, vva b) {
    vva r = {_mm256_blendv_ps(b.lo, a.lo, m.lo), _mm256_blendv_ps(b.hi, a.hi, m.hi)};
    return r;
}
VA __m256 exp8_va(__m256 x) { /* dexpf, lane for lane */
    __m256 xc = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    xc = _mm256_min_ps(xc, _mm256_set1_ps(88.0f));
    __m256 n = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                             _mm256_set1_ps(0.5f)));
    __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
    r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(p, _mm256_mul_ps(r, r)), r),
                             _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
    __m256 res = _mm256_mul_ps(y, _mm256_castsi256_ps(e));
    res = _mm256_and_ps(res, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_GE_OQ));
    return _mm256_blendv_ps(res, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
VA __m256 log8_va(__m256 x) { /* dlogf, lane for lane */
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 small = _mm256_cmp_ps(x, _mm256_set1_ps(FLT_MIN_NORMAL), _CMP_LT_OQ);
    __m256 xs = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(16777216.0f)), small);
    __m256 e0 = _mm256_and_ps(small, _mm256_set1_ps(-24.0f));
    __m256i u = _mm256_castps_si256(xs);
    __m256 e = _mm256_add_ps(
        _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(126))), e0);
    __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
        _mm256_and_si256(u, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f000000)));
    __m256 lo = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
    e = _mm256_blendv_ps(e, _mm256_sub_ps(e, one), lo);
    m = _mm256_sub_ps(_mm256_blendv_ps(m, _mm256_add_ps(m, m), lo), one);
    __m256 z = _mm256_mul_ps(m, m);
    static const float c[9] = {7.0376836292e-2f, -1.1514610310e-1f, 1.1676998740e-1f,
                               -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                               2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f};
    __m256 y = _mm256_set1_ps(c[0]);
    for (int k = 1; k < 9; k++) y = _mm256_add_ps(_mm256_mul_ps(y, m), _mm256_set1_ps(c[k]));
    y = _mm256_mul_ps(_mm256_mul_ps(y, m), z);
    y = _mm256_add_ps(y, _mm256_mul_ps(e, _mm256_set1_ps(-2.12194440e-4f)));
    y = _mm256_add_ps(y, _mm256_mul_ps(z, _mm256_set1_ps(-0.5f)));
    __m256 res = _mm256_add_ps(m, y);
    res = _mm256_add_ps(res, _mm256_mul_ps(e, _mm256_set1_ps(0.693359375f)));
    res = _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), res,
                           _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GT_OQ));
    return _mm256_blendv_ps(res, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q));
}
VA vva vexp_va(vva a) { vva r = {exp8_va(a.lo), exp8_va(a.hi)}; return r; }
VA vva vlog_va(vva a) { vva r = {log8_va(a.lo), log8_va(a.hi)}; return r; }
VA float vhmax_va(vva a) { float t[16]; _mm256_storeu_ps(t, a.lo); _mm256_storeu_ps(t + 8, a.hi); return hmax16f(t); }
VA void vtoacc_va(vva a, double *acc, double scale) {
    __m256d s = _mm256_set1_pd(scale);
    __m256d v[4] = {_mm256_cvtps_pd(_mm256_castps256_ps128(a.lo)), _mm256_cvtps_pd(_mm256_extractf128_ps(a.lo, 1)),
                    _mm256_cvtps_pd(_mm256_castps256_ps128(a.hi)), _mm256_cvtps_pd(_mm256_extractf128_ps(a.hi, 1))};
    for (int j = 0; j < 4; j++)
        _mm256_storeu_pd(acc + 4 * j, _mm256_add_pd(_mm256_mul_pd(_mm256_loadu_pd(acc + 4 * j), s), v[j]));
}
VA void vstore_va(void *g, int64_t i, int n, vva a) {
    float *d = (float *)g + i;
    if (n == 16) { _mm256_storeu_ps(d, a.lo); _mm256_storeu_ps(d + 8, a.hi); return; }
    float t[16];
    _mm256_storeu_ps(t, a.lo);
    _mm256_storeu_ps(t + 8, a.hi);
    for (int l = 0; l < n; l++) d[l] = t[l];
}
static inline float sexp_va(float x) { return dexpf(x); }
static inline void add1_va(void *g, int64_t i, float v) { ((float *)g)[i] = ((float *)g)[i] + v; }
static inline void set1_va(void *g, int64_t i, float v) { ((float *)g)[i] = v; }

#define PATH va
#define VT vva
#define RT float
#define ATTR LC_TARGET_AVX2
#include "distill_rows.h"
#undef PATH
#undef VT
#undef RT
#undef ATTR
#endif

#endif /* LC_DISTILL_LANES_H */
