/* gguf.c: GGUF / ggml block formats -- Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 quantize and dequantize,
 * the dispatch over every format (the K-quants Q2_K..Q6_K live in gguf_k.c), and the Python
 * entry points.
 *
 * Each format is one struct with a static size check and one plain scalar `*_ref` function
 * pair that is its definition, written to give the same bytes as ggml-quants.c and the
 * `gguf` package's NumPy port (gguf.quants): scales computed in float32 and stored as IEEE
 * half (round to nearest even), x/d computed as x * (1/d), no fused multiply-add (the build
 * passes -ffp-contract=off; with an FMA, Q4_0's x*id + 8.5 can round differently).  Float ->
 * integer conversions go through int32 exactly as NumPy's astype does on x86, so even
 * degenerate blocks (subnormal scales whose inverse overflows) give gguf.quants' bytes.
 */
#include "litecomp.h"
#include "quant.h"
#include "gguf.h"

#include <stddef.h>

static inline float h2f(uint16_t h) { return lc_f16_to_f32(h); }
static inline uint16_t f2h(float f) { return lc_f32_to_f16(f); }
static inline float inv_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }
static inline uint8_t clip_u8(float v, uint8_t hi) {
    uint8_t q = lc_f32_to_u8_numpy(v);
    return q > hi ? hi : q;
}

/* ------------------------------------------------------------------ Q8_0 */
static void quantize_q8_0_ref(const float *x, block_q8_0 *b) {
    float amax = 0.0f;
    for (int j = 0; j < QK; j++) { float a = fabsf(x[j]); amax = a > amax ? a : amax; }
    float d = amax / 127.0f, id = inv_or_zero(d);
    for (int j = 0; j < QK; j++) b->qs[j] = (int8_t)lc_f32_to_u8_numpy(roundf(x[j] * id));
    b->d = f2h(d);
}
static void dequantize_q8_0_ref(const block_q8_0 *b, float *y) {
    float d = h2f(b->d);
    for (int j = 0; j < QK; j++) y[j] = (float)b->qs[j] * d;
}

/* ------------------------------------------------------------------ Q4_0 / Q5_0 */
/* The value of largest magnitude, sign kept; the first one on ties (NumPy argmax order, so
 * an all-zero block keeps x[0]'s sign of zero as gguf.quants does). */
static float signed_absmax(const float *x) {
    float amax = -1.0f, max = 0.0f;
    for (int j = 0; j < QK; j++) {
        float a = fabsf(x[j]);
        if (a > amax) { amax = a; max = x[j]; }
    }
    return max;
}

static void quantize_q4_0_ref(const float *x, block_q4_0 *b) {
    float d = signed_absmax(x) / -8.0f, id = inv_or_zero(d);
    for (int j = 0; j < QK / 2; j++) {
        uint8_t q0 = clip_u8(x[j] * id + 8.5f, 15), q1 = clip_u8(x[j + QK / 2] * id + 8.5f, 15);
        b->qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
    b->d = f2h(d);
}
static void dequantize_q4_0_ref(const block_q4_0 *b, float *y) {
    float d = h2f(b->d);
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)((b->qs[j] & 0x0f) - 8);
        y[j + QK / 2] = d * (float)((b->qs[j] >> 4) - 8);
    }
}

static void quantize_q5_0_ref(const float *x, block_q5_0 *b) {
    float d = signed_absmax(x) / -16.0f, id = inv_or_zero(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t q0 = clip_u8(x[j] * id + 16.5f, 31), q1 = clip_u8(x[j + QK / 2] * id + 16.5f, 31);
        b->qs[j] = (uint8_t)((q0 & 0x0f) | (q1 << 4));
        qh |= (uint32_t)(q0 >> 4) << j;
        qh |= (uint32_t)(q1 >> 4) << (j + QK / 2);
    }
    for (int k = 0; k < 4; k++) b->qh[k] = (uint8_t)(qh >> (8 * k)); /* little-endian */
    b->d = f2h(d);
}
static inline uint32_t load_qh(const uint8_t *qh) {
    return (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
}
static void dequantize_q5_0_ref(const block_q5_0 *b, float *y) {
    float d = h2f(b->d);
    uint32_t qh = load_qh(b->qh);
    for (int j = 0; j < QK / 2; j++) {
        int q0 = (b->qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
        int q1 = (b->qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1u) << 4;
        y[j] = d * (float)(q0 - 16);
        y[j + QK / 2] = d * (float)(q1 - 16);
    }
}

/* ------------------------------------------------------------------ Q4_1 / Q5_1 */
static void block_minmax(const float *x, float *mn, float *mx) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < QK; j++) { lo = x[j] < lo ? x[j] : lo; hi = x[j] > hi ? x[j] : hi; }
    *mn = lo; *mx = hi;
}

static void quantize_q4_1_ref(const float *x, block_q4_1 *b) {
    float mn, mx;
    block_minmax(x, &mn, &mx);
    float d = (mx - mn) / 15.0f, id = inv_or_zero(d);
    for (int j = 0; j < QK / 2; j++) {
        uint8_t q0 = clip_u8((x[j] - mn) * id + 0.5f, 15);
        uint8_t q1 = clip_u8((x[j + QK / 2] - mn) * id + 0.5f, 15);
        b->qs[j] = (uint8_t)(q0 | (q1 << 4));
    }
    b->d = f2h(d);
    b->m = f2h(mn);
}
static void dequantize_q4_1_ref(const block_q4_1 *b, float *y) {
    float d = h2f(b->d), m = h2f(b->m);
    for (int j = 0; j < QK / 2; j++) {
        y[j] = d * (float)(b->qs[j] & 0x0f) + m;
        y[j + QK / 2] = d * (float)(b->qs[j] >> 4) + m;
    }
}

static void quantize_q5_1_ref(const float *x, block_q5_1 *b) {
    float mn, mx;
    block_minmax(x, &mn, &mx);
    float d = (mx - mn) / 31.0f, id = inv_or_zero(d);
    uint32_t qh = 0;
    for (int j = 0; j < QK / 2; j++) {
        uint8_t q0 = clip_u8((x[j] - mn) * id + 0.5f, 31);
        uint8_t q1 = clip_u8((x[j + QK / 2] - mn) * id + 0.5f, 31);
        b->qs[j] = (uint8_t)((q0 & 0x0f) | (q1 << 4));
        qh |= (uint32_t)(q0 >> 4) << j;
        qh |= (uint32_t)(q1 >> 4) << (j + QK / 2);
    }
    for (int k = 0; k < 4; k++) b->qh[k] = (uint8_t)(qh >> (8 * k));
    b->d = f2h(d);
    b->m = f2h(mn);
}
static void dequantize_q5_1_ref(const block_q5_1 *b, float *y) {
    float d = h2f(b->d), m = h2f(b->m);
    uint32_t qh = load_qh(b->qh);
    for (int j = 0; j < QK / 2; j++) {
        int q0 = (b->qs[j] & 0x0f) | (int)((qh >> j) & 1u) << 4;
        int q1 = (b->qs[j] >> 4) | (int)((qh >> (j + QK / 2)) & 1u) << 4;
        y[j] = d * (float)q0 + m;
        y[j + QK / 2] = d * (float)q1 + m;
    }
}

/* ------------------------------------------------------------------ AVX-512 */
/* One block of 32 = two vectors.  Bit-identical to the *_ref functions: the same float
 * operations in the same order (mul then add, never fused), roundf as trunc plus a
 * half-away-from-zero correction, and float -> int32 with cvtt, whose out-of-range result
 * INT_MIN narrows to 0 exactly like lc_f32_to_u8_numpy.  Returns 0 on a non-finite value
 * (the caller then reports it). */
#ifdef LC_X86
#define V16 __m512
LC_TARGET_AVX512 static inline int finite2(V16 a, V16 b) {
    const V16 inf = _mm512_set1_ps(INFINITY);
    return !(_mm512_cmp_ps_mask(_mm512_abs_ps(a), inf, _CMP_NLT_UQ) |
             _mm512_cmp_ps_mask(_mm512_abs_ps(b), inf, _CMP_NLT_UQ));
}
/* u8 codes (numpy semantics) of t, clipped to hi, as int32 lanes */
LC_TARGET_AVX512 static inline __m512i codes_u8(V16 t, int hi) {
    __m512i q = _mm512_and_si512(_mm512_cvttps_epi32(t), _mm512_set1_epi32(0xff));
    return _mm512_min_epu32(q, _mm512_set1_epi32(hi));
}

LC_TARGET_AVX512 static int quantize_q8_0_avx512(const float *x, void *out) {
    block_q8_0 *b = out;
    V16 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    if (!finite2(v0, v1)) return 0;
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    float d = amax / 127.0f, id = inv_or_zero(d);
    const V16 vid = _mm512_set1_ps(id), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
    V16 t[2] = {_mm512_mul_ps(v0, vid), _mm512_mul_ps(v1, vid)};
    for (int h = 0; h < 2; h++) {
        V16 tr = _mm512_roundscale_ps(t[h], _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __mmask16 up = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_sub_ps(t[h], tr)), half, _CMP_GE_OQ);
        /* tr + copysign(1, t) where the dropped fraction is >= 0.5 */
        V16 step = _mm512_or_ps(one, _mm512_and_ps(t[h], _mm512_set1_ps(-0.0f)));
        tr = _mm512_mask_add_ps(tr, up, tr, step);
        _mm_storeu_si128((__m128i *)(b->qs + 16 * h), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(tr)));
    }
    b->d = f2h(d);
    return 1;
}

LC_TARGET_AVX512 static inline float signed_absmax_avx512(const float *x, V16 v0, V16 v1) {
    V16 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    V16 va = _mm512_set1_ps(amax);
    uint32_t m = (uint32_t)_mm512_cmp_ps_mask(a0, va, _CMP_EQ_OQ) |
                 (uint32_t)_mm512_cmp_ps_mask(a1, va, _CMP_EQ_OQ) << 16;
    return x[__builtin_ctz(m)];
}

LC_TARGET_AVX512 static int quantize_qx_0_avx512(const float *x, void *out, int nl) {
    V16 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    if (!finite2(v0, v1)) return 0;
    float d = signed_absmax_avx512(x, v0, v1) / (float)-nl, id = inv_or_zero(d);
    const V16 vid = _mm512_set1_ps(id), off = _mm512_set1_ps((float)nl + 0.5f);
    __m512i q0 = codes_u8(_mm512_add_ps(_mm512_mul_ps(v0, vid), off), 2 * nl - 1);
    __m512i q1 = codes_u8(_mm512_add_ps(_mm512_mul_ps(v1, vid), off), 2 * nl - 1);
    __m512i qs = _mm512_or_si512(_mm512_and_si512(q0, _mm512_set1_epi32(0x0f)),
                                 _mm512_slli_epi32(q1, 4));
    if (nl == 8) {
        block_q4_0 *b = out;
        _mm_storeu_si128((__m128i *)b->qs, _mm512_cvtepi32_epi8(qs));
        b->d = f2h(d);
    } else {
        block_q5_0 *b = out;
        _mm_storeu_si128((__m128i *)b->qs, _mm512_cvtepi32_epi8(qs));
        uint32_t qh = (uint32_t)_mm512_test_epi32_mask(q0, _mm512_set1_epi32(16)) |
                      (uint32_t)_mm512_test_epi32_mask(q1, _mm512_set1_epi32(16)) << 16;
        for (int k = 0; k < 4; k++) b->qh[k] = (uint8_t)(qh >> (8 * k));
        b->d = f2h(d);
    }
    return 1;
}
LC_TARGET_AVX512 static int quantize_q4_0_avx512(const float *x, void *out) {
    return quantize_qx_0_avx512(x, out, 8);
}
LC_TARGET_AVX512 static int quantize_q5_0_avx512(const float *x, void *out) {
    return quantize_qx_0_avx512(x, out, 16);
}

LC_TARGET_AVX512 static int quantize_qx_1_avx512(const float *x, void *out, int nl) {
    V16 v0 = _mm512_loadu_ps(x), v1 = _mm512_loadu_ps(x + 16);
    if (!finite2(v0, v1)) return 0;
    float mn, mx;
    block_minmax(x, &mn, &mx); /* scalar: keeps the reference's sign-of-zero choice */
    float d = (mx - mn) / (float)nl, id = inv_or_zero(d);
    const V16 vid = _mm512_set1_ps(id), vmn = _mm512_set1_ps(mn), half = _mm512_set1_ps(0.5f);
    __m512i q0 = codes_u8(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v0, vmn), vid), half), nl);
    __m512i q1 = codes_u8(_mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(v1, vmn), vid), half), nl);
    __m512i qs = _mm512_or_si512(_mm512_and_si512(q0, _mm512_set1_epi32(0x0f)),
                                 _mm512_slli_epi32(q1, 4));
    if (nl == 15) {
        block_q4_1 *b = out;
        _mm_storeu_si128((__m128i *)b->qs, _mm512_cvtepi32_epi8(qs));
        b->d = f2h(d);
        b->m = f2h(mn);
    } else {
        block_q5_1 *b = out;
        _mm_storeu_si128((__m128i *)b->qs, _mm512_cvtepi32_epi8(qs));
        uint32_t qh = (uint32_t)_mm512_test_epi32_mask(q0, _mm512_set1_epi32(16)) |
                      (uint32_t)_mm512_test_epi32_mask(q1, _mm512_set1_epi32(16)) << 16;
        for (int k = 0; k < 4; k++) b->qh[k] = (uint8_t)(qh >> (8 * k));
        b->d = f2h(d);
        b->m = f2h(mn);
    }
    return 1;
}
LC_TARGET_AVX512 static int quantize_q4_1_avx512(const float *x, void *out) {
    return quantize_qx_1_avx512(x, out, 15);
}
LC_TARGET_AVX512 static int quantize_q5_1_avx512(const float *x, void *out) {
    return quantize_qx_1_avx512(x, out, 31);
}
#undef V16

/* AVX2 (machines without AVX-512): Q8_0 and Q4_0, the formats people use most.  Same
 * operations as the references; codes go through int32 lanes and are narrowed by the same
 * truncation the scalar code does. */
LC_TARGET_AVX2 static inline float hmax8(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    return _mm_cvtss_f32(m);
}

LC_TARGET_AVX2 static int load4_avx2(const float *x, __m256 v[4], __m256 a[4], float *amax) {
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
    __m256 m = _mm256_setzero_ps();
    int bad = 0;
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        a[k] = _mm256_andnot_ps(sign, v[k]);
        bad |= _mm256_movemask_ps(_mm256_cmp_ps(a[k], inf, _CMP_NLT_UQ));
        m = _mm256_max_ps(m, a[k]);
    }
    *amax = hmax8(m);
    return !bad;
}

LC_TARGET_AVX2 static int quantize_q8_0_avx2(const float *x, void *out) {
    block_q8_0 *b = out;
    __m256 v[4], a[4];
    float amax;
    if (!load4_avx2(x, v, a, &amax)) return 0;
    float d = amax / 127.0f, id = inv_or_zero(d);
    const __m256 vid = _mm256_set1_ps(id), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    int32_t q[QK];
    for (int k = 0; k < 4; k++) {
        __m256 t = _mm256_mul_ps(v[k], vid);
        __m256 tr = _mm256_round_ps(t, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(t, tr)), half, _CMP_GE_OQ);
        __m256 step = _mm256_and_ps(up, _mm256_or_ps(one, _mm256_and_ps(t, sign)));
        _mm256_storeu_si256((__m256i *)(q + 8 * k), _mm256_cvttps_epi32(_mm256_add_ps(tr, step)));
    }
    for (int j = 0; j < QK; j++) b->qs[j] = (int8_t)(uint8_t)q[j];
    b->d = f2h(d);
    return 1;
}

LC_TARGET_AVX2 static int quantize_q4_0_avx2(const float *x, void *out) {
    block_q4_0 *b = out;
    __m256 v[4], a[4];
    float amax;
    if (!load4_avx2(x, v, a, &amax)) return 0;
    const __m256 va = _mm256_set1_ps(amax);
    uint32_t m = 0;
    for (int k = 0; k < 4; k++)
        m |= (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a[k], va, _CMP_EQ_OQ)) << (8 * k);
    float d = x[__builtin_ctz(m)] / -8.0f, id = inv_or_zero(d); /* first index: argmax order */
    const __m256 vid = _mm256_set1_ps(id), off = _mm256_set1_ps(8.5f);
    const __m256i lo8 = _mm256_set1_epi32(0xff), fifteen = _mm256_set1_epi32(15);
    int32_t q[QK];
    for (int k = 0; k < 4; k++) {
        __m256i c = _mm256_cvttps_epi32(_mm256_add_ps(_mm256_mul_ps(v[k], vid), off));
        c = _mm256_min_epu32(_mm256_and_si256(c, lo8), fifteen);
        _mm256_storeu_si256((__m256i *)(q + 8 * k), c);
    }
    for (int j = 0; j < QK / 2; j++) b->qs[j] = (uint8_t)(q[j] | (q[j + QK / 2] << 4));
    b->d = f2h(d);
    return 1;
}
/* The SIMD quantizers each format has (f32 input; they return 0 for non-finite input). */
#define AVX512_q8_0 quantize_q8_0_avx512
#define AVX512_q4_0 quantize_q4_0_avx512
#define AVX512_q4_1 quantize_q4_1_avx512
#define AVX512_q5_0 quantize_q5_0_avx512
#define AVX512_q5_1 quantize_q5_1_avx512
#define AVX2_q8_0 quantize_q8_0_avx2
#define AVX2_q4_0 quantize_q4_0_avx2
#endif
#ifndef AVX512_q8_0
#define AVX512_q8_0 NULL
#define AVX512_q4_0 NULL
#define AVX512_q4_1 NULL
#define AVX512_q5_0 NULL
#define AVX512_q5_1 NULL
#define AVX2_q8_0 NULL
#define AVX2_q4_0 NULL
#endif
#define AVX2_q4_1 NULL
#define AVX2_q5_0 NULL
#define AVX2_q5_1 NULL
/* the K-quants' SIMD is inside lc_kquant_quantize */
#define AVX512_q2_K NULL
#define AVX512_q3_K NULL
#define AVX512_q4_K NULL
#define AVX512_q5_K NULL
#define AVX512_q6_K NULL
#define AVX2_q2_K NULL
#define AVX2_q3_K NULL
#define AVX2_q4_K NULL
#define AVX2_q5_K NULL
#define AVX2_q6_K NULL

/* ------------------------------------------------------------------ dispatch */
typedef struct {
    int type;
    const char *name;
    int block, bytes;
    void (*quantize)(const float *, void *);       /* the legacy formats; NULL for K-quants */
    int kquant;                                    /* 1: lc_kquant_quantize */
    void (*dequantize)(const void *, float *);
    int (*quantize_avx512)(const float *, void *); /* optional, f32 input, 0 = non-finite */
    int (*quantize_avx2)(const float *, void *);   /* optional, likewise */
} gguf_format;

/* One entry per row of LC_GGUF_TYPES (gguf.h); the K-quants quantize through
 * lc_kquant_quantize and dequantize with gguf_k.c's lc_dequantize_*. */
#define quantize_q2_K_ref NULL
#define quantize_q3_K_ref NULL
#define quantize_q4_K_ref NULL
#define quantize_q5_K_ref NULL
#define quantize_q6_K_ref NULL
#define dequantize_q2_K_ref lc_dequantize_q2_K
#define dequantize_q3_K_ref lc_dequantize_q3_K
#define dequantize_q4_K_ref lc_dequantize_q4_K
#define dequantize_q5_K_ref lc_dequantize_q5_K
#define dequantize_q6_K_ref lc_dequantize_q6_K
#define FMT(NAME, id, s, blk)                                                            \
    {id, #NAME, blk, (int)sizeof(block_##s), (void (*)(const float *, void *))quantize_##s##_ref, \
     (blk) == QK_K, (void (*)(const void *, float *))dequantize_##s##_ref, AVX512_##s, AVX2_##s},
static const gguf_format formats[] = {LC_GGUF_TYPES(FMT)};
#undef FMT

static const gguf_format *find_format(int type) {
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (formats[i].type == type) return &formats[i];
    return NULL;
}

#define TASK_BLOCKS 256 /* blocks per parallel task */

static int all_finite(const float *x, int64_t n) {
    int ok = 1;
    for (int64_t j = 0; j < n; j++) ok &= fabsf(x[j]) < INFINITY;
    return ok;
}

/* K-quants in runs of up to LC_KQ_RUN blocks (their SIMD fits want 16 groups at a time).
 * qw: importance weights of one row (row_blocks blocks long) or NULL; block b uses the
 * weights of its place in its row. */
static int kquant_task(const void *x, int code, int64_t b0, int64_t b1, const gguf_format *f,
                       const float *qw, int64_t row_blocks, uint8_t *out, int simd) {
    float buf[LC_KQ_RUN * QK_K];
    const float *w[LC_KQ_RUN];
    int bad = 0;
    for (int64_t b = b0; b < b1; b += LC_KQ_RUN) {
        int64_t nb = b1 - b < LC_KQ_RUN ? b1 - b : LC_KQ_RUN;
        const float *src;
        if (code == LC_F32) src = (const float *)x + b * QK_K;
        else { lc_to_f32(x, code, b * QK_K, nb * QK_K, buf); src = buf; }
        if (!all_finite(src, nb * QK_K)) { bad = 1; continue; } /* the call fails */
        for (int64_t i = 0; i < nb; i++) w[i] = qw ? qw + ((b + i) % row_blocks) * QK_K : NULL;
        lc_kquant_quantize(f->type, src, nb, w, out + b * f->bytes, simd);
    }
    return bad;
}

static lc_status gguf_quantize(const void *x, int code, int64_t nblocks, const gguf_format *f,
                               const float *qw, int64_t row_blocks, uint8_t *out) {
    int64_t ntasks = lc_nblocks(nblocks, TASK_BLOCKS);
    int bad = 0, level = lc_simd();
    int (*simd)(const float *, void *) = NULL;
    if (code == LC_F32 && level >= LC_SIMD_AVX512) simd = f->quantize_avx512;
    else if (code == LC_F32 && level >= LC_SIMD_AVX2) simd = f->quantize_avx2;
    /* a K-quant block is ~100x the work of a legacy one: parallel from fewer blocks */
    int64_t work = nblocks * f->block * (f->kquant ? 100 : 1);
    (void)work; /* unused in a serial build */
    LC_OMP(parallel for num_threads(lc_threads_for(work)) schedule(dynamic, 1) reduction(|:bad))
    for (int64_t t = 0; t < ntasks; t++) {
        float buf[QK];
        int64_t b0 = t * TASK_BLOCKS, b1 = b0 + TASK_BLOCKS < nblocks ? b0 + TASK_BLOCKS : nblocks;
        if (f->kquant) {
            bad |= kquant_task(x, code, b0, b1, f, qw, row_blocks, out, level);
        } else if (simd) {
            for (int64_t b = b0; b < b1; b++)
                bad |= !simd((const float *)x + b * f->block, out + b * f->bytes);
        } else {
            for (int64_t b = b0; b < b1; b++) {
                const float *src;
                if (code == LC_F32) src = (const float *)x + b * f->block;
                else { lc_to_f32(x, code, b * f->block, f->block, buf); src = buf; }
                bad |= !all_finite(src, f->block);
                f->quantize(src, out + b * f->bytes);
            }
        }
    }
    return bad ? LC_ERR_NONFINITE : LC_OK;
}

static void gguf_dequantize(const uint8_t *data, int64_t nblocks, const gguf_format *f, float *y) {
    int64_t ntasks = lc_nblocks(nblocks, TASK_BLOCKS);
    LC_OMP(parallel for num_threads(lc_threads_for(nblocks * f->block)) schedule(dynamic, 16))
    for (int64_t t = 0; t < ntasks; t++) {
        int64_t b1 = (t + 1) * TASK_BLOCKS < nblocks ? (t + 1) * TASK_BLOCKS : nblocks;
        for (int64_t b = t * TASK_BLOCKS; b < b1; b++)
            f->dequantize(data + b * f->bytes, y + b * f->block);
    }
}

/* ------------------------------------------------------------------ Python entry points */
static const gguf_format *format_arg(int type) {
    const gguf_format *f = find_format(type);
    if (!f) PyErr_Format(lc_ArgumentError, "qtype: ggml type %d is not supported here", type);
    return f;
}

static PyObject *py_gguf_quantize(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *out;
    PyObject *qw_obj = Py_None;
    int code, type;
    if (!PyArg_ParseTuple(args, "O!iiO!|O", &PyArray_Type, &x, &code, &type, &PyArray_Type,
                          &out, &qw_obj))
        return NULL;
    const gguf_format *f = format_arg(type);
    if (!f || lc_check_array(x, "x", code, 0) < 0 || lc_check_array(out, "out", LC_U8, 1) < 0)
        return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    int64_t n = PyArray_SIZE(x), nb = n / f->block;
    if (n % f->block || PyArray_SIZE(out) != nb * f->bytes) {
        PyErr_Format(lc_ShapeError, "x: %lld values do not fill blocks of %d, or out is not "
                     "%lld bytes", (long long)n, f->block, (long long)(nb * f->bytes));
        return NULL;
    }
    const float *qw = NULL;
    int64_t row_blocks = 1;
    PyArrayObject *qa;
    if (lc_arg_optional_array(qw_obj, "imatrix", LC_F32, 0, &qa) < 0) return NULL;
    if (qa) {
        int64_t row = PyArray_NDIM(x) ? PyArray_DIM(x, PyArray_NDIM(x) - 1) : 1;
        if (!f->kquant || PyArray_SIZE(qa) != row || row % f->block) {
            PyErr_Format(lc_ShapeError, "imatrix: expected %lld float32 weights (one per "
                         "column of x) for a K-quant format", (long long)row);
            return NULL;
        }
        qw = PyArray_DATA(qa);
        row_blocks = row / f->block;
    }
    const void *p = PyArray_DATA(x);
    uint8_t *o = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = gguf_quantize(p, code, nb, f, qw, row_blocks, o);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_gguf_dequantize(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *data, *out;
    int type;
    if (!PyArg_ParseTuple(args, "O!iO!", &PyArray_Type, &data, &type, &PyArray_Type, &out))
        return NULL;
    const gguf_format *f = format_arg(type);
    if (!f || lc_check_array(data, "data", LC_U8, 0) < 0 || lc_check_array(out, "out", LC_F32, 1) < 0)
        return NULL;
    int64_t nbytes = PyArray_SIZE(data), nb = nbytes / f->bytes;
    if (nbytes % f->bytes || PyArray_SIZE(out) != nb * f->block) {
        PyErr_Format(lc_FormatError, "data: %lld bytes are not whole %d-byte blocks",
                     (long long)nbytes, f->bytes);
        return NULL;
    }
    const uint8_t *p = PyArray_DATA(data);
    float *o = PyArray_DATA(out);
    LC_NOGIL_BEGIN
    gguf_dequantize(p, nb, f, o);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* {name: (ggml type id, values per block, bytes per block)} for every format here. */
static PyObject *py_gguf_formats(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    PyObject *d = PyDict_New();
    for (size_t i = 0; d && i < sizeof formats / sizeof formats[0]; i++) {
        const gguf_format *f = &formats[i];
        PyObject *v = Py_BuildValue("(iii)", f->type, f->block, f->bytes);
        if (!v || PyDict_SetItemString(d, f->name, v) < 0) Py_CLEAR(d);
        Py_XDECREF(v);
    }
    return d;
}

static PyMethodDef methods[] = {
    {"gguf_quantize", py_gguf_quantize, METH_VARARGS,
     "gguf_quantize(x, code, type, out[, imatrix]): ggml blocks of a float array."},
    {"gguf_dequantize", py_gguf_dequantize, METH_VARARGS,
     "gguf_dequantize(data, type, out): float32 values of ggml blocks."},
    {"gguf_formats", py_gguf_formats, METH_NOARGS,
     "{name: (ggml type id, values per block, bytes per block)}."},
    {NULL, NULL, 0, NULL},
};

int lc_init_gguf(PyObject *m) { return lc_add_methods(m, methods); }
