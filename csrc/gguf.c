/* gguf.c: GGUF / ggml block formats -- Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 quantize and dequantize,
 * Q4_K and Q6_K dequantize and quantize.
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

/* ------------------------------------------------------------------ Q4_K */
/* Scales/mins of sub-block j: bytes 0-3 hold sc[0..3] (low 6 bits) and the top 2 bits of
 * sc[4..7]; bytes 4-7 the same for mins; bytes 8-11 the low 4 bits of sc[4..7] (low nibble)
 * and mins[4..7] (high nibble). */
static inline void get_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequantize_q4_K_ref(const block_q4_K *b, float *y) {
    float d = h2f(b->d), dmin = h2f(b->dmin);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min(j, b->scales, &sc, &m);
        float dl = d * (float)sc, ml = dmin * (float)m;
        const uint8_t *q = b->qs + 32 * (j / 2);
        int shift = 4 * (j % 2);
        for (int l = 0; l < 32; l++) y[32 * j + l] = dl * (float)((q[l] >> shift) & 0x0f) - ml;
    }
}

/* llama.cpp make_qkx2_quants: asymmetric 4-bit fit of a sub-block with weights, searching
 * the scale over nstep candidate ranges (rmin -1, rdelta 0.1, 20 steps), mins >= 0 form. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux) {
    const float rmin = -1.0f, rdelta = 0.1f;
    const int nstep = 20;
    float min = x[0], max = x[0], sum_w = weights[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        for (int i = 0; i < n; i++) L[i] = 0;
        *the_min = -min;
        return 0.0f;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale, best_mad = 0;
    for (int i = 0; i < n; i++) {
        int l = (int)nearbyintf(iscale * (x[i] - min));
        L[i] = (uint8_t)(l < 0 ? 0 : l > nmax ? nmax : l);
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_mad += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = (int)nearbyintf(iscale * (x[i] - min));
            l = l < 0 ? 0 : l > nmax ? nmax : l;
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) { this_min = 0; this_scale = sum_xl / sum_l2; }
            float mad = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                mad += weights[i] * diff;
            }
            if (mad < best_mad) {
                for (int i = 0; i < n; i++) L[i] = Laux[i];
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* llama.cpp quantize_row_q4_K_ref. */
static void quantize_q4_K_ref(const float *x, block_q4_K *b) {
    uint8_t L[QK_K], Laux[32];
    float weights[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux);
        if (scales[j] > max_scale) max_scale = scales[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    memset(b->scales, 0, sizeof b->scales);
    for (int j = 0; j < 8; j++) {
        int ls = (int)nearbyintf(inv_scale * scales[j]), lm = (int)nearbyintf(inv_min * mins[j]);
        uint8_t sc = (uint8_t)(ls > 63 ? 63 : ls), m = (uint8_t)(lm > 63 ? 63 : lm);
        if (j < 4) {
            b->scales[j] = sc;
            b->scales[j + 4] = m;
        } else {
            b->scales[j + 4] = (uint8_t)((sc & 0xf) | ((m & 0xf) << 4));
            b->scales[j - 4] |= (uint8_t)((sc >> 4) << 6);
            b->scales[j] |= (uint8_t)((m >> 4) << 6);
        }
    }
    b->d = f2h(max_scale / 63.0f);
    b->dmin = f2h(max_min / 63.0f);
    for (int j = 0; j < 8; j++) {
        uint8_t sc, m;
        get_scale_min(j, b->scales, &sc, &m);
        float d = h2f(b->d) * sc;
        if (!d) continue;
        float dm = h2f(b->dmin) * m;
        for (int ii = 0; ii < 32; ii++) {
            int l = (int)nearbyintf((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)(l < 0 ? 0 : l > 15 ? 15 : l);
        }
    }
    for (int j = 0; j < QK_K; j += 64)
        for (int l = 0; l < 32; l++) b->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

/* ------------------------------------------------------------------ Q6_K */
static void dequantize_q6_K_ref(const block_q6_K *b, float *y) {
    float d = h2f(b->d);
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, r = e % 128;
        int lo = (b->ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        int hi = (b->qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        float dl = d * (float)b->scales[e / 16];
        y[e] = dl * (float)((lo | (hi << 4)) - 32);
    }
}

/* llama.cpp make_qx_quants (rmse_type 1): symmetric fit with weights x^2, 9 candidate scales. */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < 1e-15f) { /* GROUP_MAX_EPS */
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = (int)nearbyintf(iscale * x[i]);
        l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = (int)nearbyintf(iscale * x[i]);
            l = l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l;
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = (int)nearbyintf(iscale * x[i]);
                L[i] = (int8_t)(nmax + (l < -nmax ? -nmax : l > nmax - 1 ? nmax - 1 : l));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* llama.cpp quantize_row_q6_K_ref. */
static void quantize_q6_K_ref(const float *x, block_q6_K *b) {
    int8_t L[QK_K];
    float scales[QK_K / 16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < QK_K / 16; ib++) {
        float scale = make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
        scales[ib] = scale;
        float abs_scale = fabsf(scale);
        if (abs_scale > max_abs_scale) { max_abs_scale = abs_scale; max_scale = scale; }
    }
    memset(b, 0, sizeof *b);
    if (max_abs_scale < 1e-15f) return; /* all zero: d = 0 and zero codes (ql/qh of 0 -> -32 * 0) */
    float iscale = -128.0f / max_scale;
    b->d = f2h(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ib++) {
        int s = (int)nearbyintf(iscale * scales[ib]);
        b->scales[ib] = (int8_t)(s > 127 ? 127 : s);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        float d = h2f(b->d) * b->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++) {
            int l = (int)nearbyintf(x[16 * j + ii] / d);
            l = l < -32 ? -32 : l > 31 ? 31 : l;
            L[16 * j + ii] = (int8_t)(l + 32);
        }
    }
    for (int j = 0; j < QK_K; j += 128) {
        uint8_t *ql = b->ql + j / 2, *qh = b->qh + j / 4;
        for (int l = 0; l < 32; l++) {
            uint8_t q1 = (uint8_t)(L[j + l] & 0xf), q2 = (uint8_t)(L[j + l + 32] & 0xf);
            uint8_t q3 = (uint8_t)(L[j + l + 64] & 0xf), q4 = (uint8_t)(L[j + l + 96] & 0xf);
            ql[l] = (uint8_t)(q1 | (q3 << 4));
            ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
            qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) |
                              ((L[j + l + 64] >> 4) << 4) | ((L[j + l + 96] >> 4) << 6));
        }
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
#define AVX512_q4_K NULL
#define AVX512_q6_K NULL
#define AVX2_q4_1 NULL
#define AVX2_q5_0 NULL
#define AVX2_q5_1 NULL
#define AVX2_q4_K NULL
#define AVX2_q6_K NULL

/* ------------------------------------------------------------------ dispatch */
typedef struct {
    int type;
    const char *name;
    int block, bytes;
    void (*quantize)(const float *, void *);
    void (*dequantize)(const void *, float *);
    int (*quantize_avx512)(const float *, void *); /* optional, f32 input, 0 = non-finite */
    int (*quantize_avx2)(const float *, void *);   /* optional, likewise */
} gguf_format;

/* One entry per row of LC_GGUF_TYPES (gguf.h). */
#define FMT(NAME, id, s, blk)                                                            \
    {id, #NAME, blk, (int)sizeof(block_##s), (void (*)(const float *, void *))quantize_##s##_ref, \
     (void (*)(const void *, float *))dequantize_##s##_ref, AVX512_##s, AVX2_##s},
static const gguf_format formats[] = {LC_GGUF_TYPES(FMT)};
#undef FMT

static const gguf_format *find_format(int type) {
    for (size_t i = 0; i < sizeof formats / sizeof formats[0]; i++)
        if (formats[i].type == type) return &formats[i];
    return NULL;
}

#define TASK_BLOCKS 256 /* blocks per parallel task */

static lc_status gguf_quantize(const void *x, int code, int64_t nblocks, const gguf_format *f,
                               uint8_t *out) {
    int64_t ntasks = lc_nblocks(nblocks, TASK_BLOCKS);
    int bad = 0;
    int (*simd)(const float *, void *) = NULL;
    if (code == LC_F32 && lc_simd() >= LC_SIMD_AVX512) simd = f->quantize_avx512;
    else if (code == LC_F32 && lc_simd() >= LC_SIMD_AVX2) simd = f->quantize_avx2;
    LC_OMP(parallel for num_threads(lc_threads_for(nblocks * f->block)) schedule(dynamic, 16) reduction(|:bad))
    for (int64_t t = 0; t < ntasks; t++) {
        float buf[QK_K];
        int64_t b1 = (t + 1) * TASK_BLOCKS < nblocks ? (t + 1) * TASK_BLOCKS : nblocks;
        if (simd) {
            for (int64_t b = t * TASK_BLOCKS; b < b1; b++)
                bad |= !simd((const float *)x + b * f->block, out + b * f->bytes);
            continue;
        }
        for (int64_t b = t * TASK_BLOCKS; b < b1; b++) {
            const float *src;
            if (code == LC_F32) src = (const float *)x + b * f->block;
            else { lc_to_f32(x, code, b * f->block, f->block, buf); src = buf; }
            for (int j = 0; j < f->block; j++) bad |= !(fabsf(src[j]) < INFINITY);
            f->quantize(src, out + b * f->bytes);
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
    int code, type;
    if (!PyArg_ParseTuple(args, "O!iiO!", &PyArray_Type, &x, &code, &type, &PyArray_Type, &out))
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
    const void *p = PyArray_DATA(x);
    uint8_t *o = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = gguf_quantize(p, code, nb, f, o);
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
     "gguf_quantize(x, code, type, out): ggml blocks of a float array."},
    {"gguf_dequantize", py_gguf_dequantize, METH_VARARGS,
     "gguf_dequantize(data, type, out): float32 values of ggml blocks."},
    {"gguf_formats", py_gguf_formats, METH_NOARGS,
     "{name: (ggml type id, values per block, bytes per block)}."},
    {NULL, NULL, 0, NULL},
};

int lc_init_gguf(PyObject *m) { return lc_add_methods(m, methods); }
