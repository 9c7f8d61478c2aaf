/* gguf_k.c: the GGUF K-quants Q2_K, Q3_K, Q4_K, Q5_K and Q6_K -- quantize (with or without
 * an importance matrix) and dequantize one 256-value super-block.
 *
 * These follow llama.cpp's reference quantizers (ggml-quants.c: quantize_row_*_ref without
 * importance weights, quantize_row_*_impl with them, as its quantize_*_K entry points choose)
 * operation for operation, so the bytes are the same: float32 arithmetic in the same order
 * (sums accumulated element by element from 0, no fused multiply-add: the build passes
 * -ffp-contract=off), the same rounding (nearest_int below, which is not nearbyintf outside
 * +-2^22), and the same integer narrowing where a code is stored in a byte.  The NumPy port
 * in litecomp/reference/gguf.py is written from the same facts; the tests require equal
 * bytes between the two and, where llama.cpp's own library is available, with it.
 *
 * Terms: a super-block of 256 values is cut into sub-blocks of 16 or 32; each sub-block
 * gets a scale (and for the affine formats a min) fitted by a small search, and the
 * sub-block scales are themselves quantized to 4, 6 or 8 bits against one fp16 super-scale.
 */
#include "litecomp.h"
#include "gguf.h"

#define EPS 1e-15f /* a group whose largest |x| is below this is all zero */

static inline float h2f(uint16_t h) { return lc_f16_to_f32(h); }
static inline uint16_t f2h(float f) { return lc_f32_to_f16(f); }
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Round to nearest (ties to even) by the 1.5 * 2^23 trick ggml uses: exact for |v| < 2^22;
 * larger values wrap the same way ggml's do, so even degenerate inputs give its bytes. */
static inline int nearest_int(float v) {
    float t = v + 12582912.0f;
    int32_t i;
    memcpy(&i, &t, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* The first value of largest magnitude (sign kept) of n values, and that magnitude. */
static inline float first_absmax(int n, const float *x, float *max) {
    float amax = 0, m = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; m = x[i]; }
    }
    *max = m;
    return amax;
}

/* Symmetric fit of n values to codes -nmax..nmax-1 with weights w, trying 19 scales around
 * nmax / max|x|; keeps the one with the largest (sum w x l)^2 / sum w l^2 (ggml's
 * make_qx_quants, rmse_type 1, whose default weights are x^2).  L gets code + nmax; returns
 * the scale. */
static float fit_symmetric(int n, int nmax, const float *x, const float *w, uint8_t *L) {
    float max, amax = first_absmax(n, x, &max);
    if (amax < EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (uint8_t)(l + nmax);
        sumlx += w[i] * x[i] * l;
        suml2 += w[i] * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            sumlx += w[i] * x[i] * l;
            suml2 += w[i] * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (uint8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Q3_K's symmetric fit (weights x^2): start from nmax / max|x|, then up to 5 passes that
 * move single codes while that raises (sum w x l)^2 / sum w l^2. */
static float fit_symmetric_refine(int n, int nmax, const float *x, uint8_t *Lout) {
    int8_t L[32];
    float max, amax = first_absmax(n, x, &max);
    if (amax < EPS) {
        for (int i = 0; i < n; i++) Lout[i] = 0;
        return 0.0f;
    }
    float iscale = -nmax / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i], slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int nl = imax(-nmax, imin(nmax - 1, nearest_int(x[i] * sl2 / slx)));
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < n; i++) Lout[i] = (uint8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Affine fit x ~ scale * l - min (l in 0..nmax, min >= 0) with weights: the min/max start,
 * then nstep + 1 candidate ranges (rmin + rdelta * is + nmax) / (max - min), each solved
 * for the weighted least-squares scale and min; keeps the one with the smallest weighted
 * error (|e| with use_mad, e^2 without).  Returns the scale, *the_min the min. */
static float fit_affine(int n, int nmax, const float *x, const float *weights, uint8_t *L,
                        float *the_min, float rmin, float rdelta, int nstep, int use_mad) {
    uint8_t Laux[32];
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
    float iscale = nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best += weights[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
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
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                err += weights[i] * diff;
            }
            if (err < best) {
                for (int i = 0; i < n; i++) L[i] = Laux[i];
                best = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Non-negative codes 0..nmax for n non-negative values (sub-block scales or mins) with
 * weights: the best of 9 scales around nmax / max, then up to 5 passes moving single codes.
 * L is stored as bytes exactly as ggml narrows it. */
static float fit_positive(int n, int nmax, const float *x, uint8_t *L, const float *qw) {
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i];
    if (max < EPS) {
        for (int i = 0; i < n; i++) L[i] = 0;
        return 0.0f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    float scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        float diff = x[i] - scale * L[i];
        best += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        float iscale_is = (0.1f * is + nmax) / max, scale_is = 1 / iscale_is, mse = 0;
        for (int i = 0; i < n; i++) {
            int l = imin(nmax, nearest_int(iscale_is * x[i]));
            float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best) {
            best = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imin(nmax, nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        float w = qw[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int changed = 0;
        for (int i = 0; i < n; i++) {
            float w = qw[i], slx = sumlx - w * x[i] * L[i], sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                int nl = imin(nmax, nearest_int(x[i] * sl2 / slx));
                if (nl != L[i]) {
                    slx += w * x[i] * nl;
                    sl2 += w * nl * nl;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)nl;
                        sumlx = slx;
                        suml2 = sl2;
                        changed++;
                    }
                }
            }
        }
        if (!changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

static float sum_squares(const float *x, int n) {
    float s = 0;
    for (int i = 0; i < n; i++) s += x[i] * x[i];
    return s;
}

/* 2-bit codes of 256 values, four per byte: byte j/4 + l of each 128-value half holds
 * elements j + l, j + l + 32, j + l + 64 and j + l + 96 from the low bits up. */
static void pack_2bit(const uint8_t *L, uint8_t *qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; l++)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) |
                                      (L[j + l + 96] << 6));
}

/* Scales/mins of Q4_K/Q5_K sub-block j: bytes 0-3 hold sc[0..3] (low 6 bits) and the top 2
 * bits of sc[4..7]; bytes 4-7 the same for mins; bytes 8-11 the low 4 bits of sc[4..7]
 * (low nibble) and of mins[4..7] (high nibble). */
static inline void get_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void put_scale_min(int j, uint8_t ls, uint8_t lm, uint8_t *q) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* Codes of every sub-block of 32 again, from the stored (rounded) scales and mins. */
static void requantize_affine32(const float *x, const uint8_t *scales, uint16_t d16,
                                uint16_t dmin16, int nmax, uint8_t *L) {
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        get_scale_min(j, scales, &sc, &m);
        float d = h2f(d16) * sc;
        if (!d) continue;
        float dm = h2f(dmin16) * m;
        for (int ii = 0; ii < 32; ii++)
            L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + ii] + dm) / d)));
    }
}

/* ------------------------------------------------------------------ the groups' fits */
/* A format quantizes a super-block in three steps: the fit weights of its 256 values, the
 * fit of each group (sub-block) -- where nearly all the time goes --, and the scalar finish
 * (the super-block scales, the codes again from the rounded scales, the packing).  The fits
 * of many groups are independent, so the SIMD paths (gguf_lanes.h) run 16 groups side by
 * side, one per lane, each lane doing the scalar operations in the scalar order. */
enum { FIT_AFFINE, FIT_SYMMETRIC, FIT_REFINE };

typedef struct {
    int n, nmax, kind;
    float rmin, rdelta; /* FIT_AFFINE: the candidate ranges searched */
    int nstep, use_mad;
} fit_spec;

static void fit_one(const fit_spec *s, const float *x, const float *w, uint8_t *L, float *scale,
                    float *min) {
    if (s->kind == FIT_AFFINE)
        *scale = fit_affine(s->n, s->nmax, x, w, L, min, s->rmin, s->rdelta, s->nstep, s->use_mad);
    else if (s->kind == FIT_SYMMETRIC)
        *scale = fit_symmetric(s->n, s->nmax, x, w, L);
    else
        *scale = fit_symmetric_refine(s->n, s->nmax, x, L);
}

#define NL 16 /* groups fitted side by side */
#ifdef LC_X86
#define LANES(name) name##_avx512
#define LANES_TARGET LC_TARGET_AVX512
#include "gguf_lanes.h"
#undef LANES
#undef LANES_TARGET
#endif

static void fit_groups(const fit_spec *s, int64_t ng, const float *x, const float *w, uint8_t *L,
                       float *scale, float *min, int simd) {
    int64_t g = 0;
#ifdef LC_X86
    /* (AVX2 runs the scalar fits: the compiler's split of these 16-lane vectors into ymm
     * halves came out slower than scalar code) */
    if (simd >= LC_SIMD_AVX512) {
        for (; g + 2 * NL <= ng; g += 2 * NL) {
            const int64_t o = g * s->n;
            fit_lanes_avx512(s, x + o, w ? w + o : NULL, L + o, scale + g, min + g);
        }
    }
#else
    (void)simd;
#endif
    for (; g < ng; g++)
        fit_one(s, x + g * s->n, w ? w + g * s->n : NULL, L + g * s->n, scale + g, min + g);
}

/* ------------------------------------------------------------------ Q2_K */
static const fit_spec Q2_REF = {16, 3, FIT_AFFINE, -0.5f, 0.1f, 15, 1};
static const fit_spec Q2_IMP = {16, 3, FIT_AFFINE, -0.9f, 0.05f, 36, 0};

/* weights qw * sqrt(sigma2 + x^2), sigma2 = factor * mean x^2 of the super-block */
static void weights_sigma(const float *x, const float *qw, float factor, float *w) {
    float sigma2 = factor * sum_squares(x, QK_K) / QK_K;
    for (int l = 0; l < QK_K; l++) w[l] = qw[l] * sqrtf(sigma2 + x[l] * x[l]);
}

static void weights_q2(const float *x, const float *qw, float *w) {
    if (qw) {
        weights_sigma(x, qw, 1.0f, w);
    } else {
        for (int l = 0; l < QK_K; l++) w[l] = fabsf(x[l]);
    }
}

/* the weights' sum of each group of n, from 0 in order */
static void group_sums(const float *w, int n, float *sw) {
    for (int j = 0; j < QK_K / n; j++) {
        float s = 0;
        for (int l = 0; l < n; l++) s += w[n * j + l];
        sw[j] = s;
    }
}

static void finish_q2(const float *x, const float *qw, const float *w, const float *scales,
                      const float *mins, uint8_t *L, void *out) {
    block_q2_K *y = out;
    if (!qw) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        if (max_scale > 0) {
            float iscale = 15.0f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) y->scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y->d = f2h(max_scale / 15.0f);
        } else {
            for (int j = 0; j < QK_K / 16; j++) y->scales[j] = 0;
            y->d = f2h(0.0f);
        }
        if (max_min > 0) {
            float iscale = 15.0f / max_min;
            for (int j = 0; j < QK_K / 16; j++)
                y->scales[j] = (uint8_t)(y->scales[j] | (nearest_int(iscale * mins[j]) << 4));
            y->dmin = f2h(max_min / 15.0f);
        } else {
            y->dmin = f2h(0.0f);
        }
    } else {
        float sw[QK_K / 16];
        uint8_t Ls[QK_K / 16], Lm[QK_K / 16];
        group_sums(w, 16, sw);
        y->d = f2h(fit_positive(QK_K / 16, 15, scales, Ls, sw));
        y->dmin = f2h(fit_positive(QK_K / 16, 15, mins, Lm, sw));
        for (int j = 0; j < QK_K / 16; j++) y->scales[j] = (uint8_t)(Ls[j] | (Lm[j] << 4));
    }
    float dm = h2f(y->d), mm = h2f(y->dmin);
    for (int j = 0; j < QK_K / 16; j++) {
        float d = dm * (y->scales[j] & 0xF);
        if (!d) continue;
        float m = mm * (y->scales[j] >> 4);
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (uint8_t)imax(0, imin(3, nearest_int((x[16 * j + ii] + m) / d)));
    }
    pack_2bit(L, y->qs);
}

/* ------------------------------------------------------------------ Q3_K */
static const fit_spec Q3_REF = {16, 4, FIT_REFINE, 0, 0, 0, 0};
static const fit_spec Q3_IMP = {16, 4, FIT_SYMMETRIC, 0, 0, 0, 0};

/* Q3_K's 16 6-bit scales: low 4 bits of scale j in byte j % 8 (j < 8: low nibble, else
 * high), its top 2 bits in byte 8 + j % 4 at bit 2 * (j / 4). */
static void put_scale_q3(int j, int l, uint8_t *s) {
    if (j < 8) s[j] = (uint8_t)(l & 0xF);
    else s[j - 8] |= (uint8_t)((l & 0xF) << 4);
    l >>= 4;
    s[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
}

static inline int get_scale_q3(int j, const uint8_t *s) {
    int8_t sc = (int8_t)(j < 8 ? s[j] & 0xF : s[j - 8] >> 4);
    return (int8_t)((sc | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32);
}

static void weights_q3(const float *x, const float *qw, float *w) {
    if (qw) weights_sigma(x, qw, 2.0f, w);
}

static void finish_q3(const float *x, const float *qw, const float *w, const float *scales,
                      const float *mins, uint8_t *L, void *out) {
    (void)mins;
    block_q3_K *y = out;
    memset(y->scales, 0, 12);
    if (!qw) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < QK_K / 16; j++) {
            float a = fabsf(scales[j]);
            if (a > amax) { amax = a; max_scale = scales[j]; }
        }
        if (max_scale) {
            float iscale = -32.0f / max_scale;
            for (int j = 0; j < QK_K / 16; j++) {
                int8_t l = (int8_t)nearest_int(iscale * scales[j]);
                l = (int8_t)(imax(-32, imin(31, l)) + 32);
                put_scale_q3(j, l, y->scales);
            }
            y->d = f2h(1 / iscale);
        } else {
            y->d = f2h(0.0f);
        }
    } else {
        float sw[QK_K / 16];
        uint8_t Ls[QK_K / 16];
        group_sums(w, 16, sw);
        float d_block = fit_symmetric(QK_K / 16, 32, scales, sw, Ls);
        for (int j = 0; j < QK_K / 16; j++) put_scale_q3(j, Ls[j], y->scales);
        y->d = f2h(d_block);
    }
    for (int j = 0; j < QK_K / 16; j++) {
        float d = h2f(y->d) * get_scale_q3(j, y->scales);
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (uint8_t)(imax(-4, imin(3, nearest_int(x[16 * j + ii] / d))) + 4);
    }
    /* the high bit of element j goes to hmask[j % 32], bit j / 32 */
    memset(y->hmask, 0, QK_K / 8);
    for (int j = 0; j < QK_K; j++) {
        if (L[j] > 3) {
            y->hmask[j % 32] |= (uint8_t)(1u << (j / 32));
            L[j] = (uint8_t)(L[j] - 4);
        }
    }
    pack_2bit(L, y->qs);
}

/* ------------------------------------------------------------------ Q4_K / Q5_K */
static const fit_spec Q4_REF = {32, 15, FIT_AFFINE, -1.0f, 0.1f, 20, 0};
static const fit_spec Q5_REF = {32, 31, FIT_AFFINE, -0.5f, 0.1f, 15, 0};
static const fit_spec Q4_IMP = {32, 15, FIT_AFFINE, -0.9f, 0.05f, 36, 0};
static const fit_spec Q5_IMP = {32, 31, FIT_AFFINE, -0.9f, 0.05f, 36, 0};

/* without importance weights: av_x + |x|, av_x the RMS of the value's group of 32 */
static void weights_q45(const float *x, const float *qw, float *w) {
    if (qw) {
        weights_sigma(x, qw, 2.0f, w);
        return;
    }
    for (int j = 0; j < QK_K / 32; j++) {
        float av_x = sqrtf(sum_squares(x + 32 * j, 32) / 32);
        for (int l = 0; l < 32; l++) w[32 * j + l] = av_x + fabsf(x[32 * j + l]);
    }
}

/* The 6-bit scale and min codes: rounded against the largest without importance weights,
 * fitted (fit_positive) with them. */
static void scales_q45(const float *qw, const float *w, const float *scales, const float *mins,
                       int nmax, uint8_t *packed, uint16_t *d16, uint16_t *dmin16) {
    memset(packed, 0, 12);
    if (!qw) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QK_K / 32; j++) {
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
        float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
        for (int j = 0; j < QK_K / 32; j++) {
            uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
            uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
            put_scale_min(j, ls < 63 ? ls : 63, lm < 63 ? lm : 63, packed);
        }
        *d16 = f2h(max_scale / 63.0f);
        *dmin16 = f2h(max_min / 63.0f);
    } else {
        float sw[QK_K / 32];
        uint8_t Ls[QK_K / 32], Lm[QK_K / 32];
        group_sums(w, 32, sw);
        float d_block = fit_positive(QK_K / 32, 63, scales, Ls, sw);
        float m_block = fit_positive(QK_K / 32, 63, mins, Lm, sw);
        /* (ggml clips the codes to 63 here for Q5_K only; they differ only for a negative
         * fitted scale, whose code wraps) */
        int clip = nmax == 31;
        for (int j = 0; j < QK_K / 32; j++)
            put_scale_min(j, clip && Ls[j] > 63 ? 63 : Ls[j], clip && Lm[j] > 63 ? 63 : Lm[j],
                          packed);
        *d16 = f2h(d_block);
        *dmin16 = f2h(m_block);
    }
}

static void finish_q4(const float *x, const float *qw, const float *w, const float *scales,
                      const float *mins, uint8_t *L, void *out) {
    block_q4_K *y = out;
    scales_q45(qw, w, scales, mins, 15, y->scales, &y->d, &y->dmin);
    requantize_affine32(x, y->scales, y->d, y->dmin, 15, L);
    for (int j = 0; j < QK_K; j += 64)
        for (int l = 0; l < 32; l++) y->qs[j / 2 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void finish_q5(const float *x, const float *qw, const float *w, const float *scales,
                      const float *mins, uint8_t *L, void *out) {
    block_q5_K *y = out;
    scales_q45(qw, w, scales, mins, 31, y->scales, &y->d, &y->dmin);
    requantize_affine32(x, y->scales, y->d, y->dmin, 31, L);
    /* low nibbles as Q4_K; bit 4 of element n + j (n a multiple of 64) in qh[j], bit
     * n / 32, and of element n + j + 32 in bit n / 32 + 1 */
    memset(y->qh, 0, QK_K / 8);
    for (int n = 0; n < QK_K; n += 64) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; y->qh[j] |= (uint8_t)(1u << (n / 32)); }
            if (l2 > 15) { l2 -= 16; y->qh[j] |= (uint8_t)(2u << (n / 32)); }
            y->qs[n / 2 + j] = (uint8_t)(l1 | (l2 << 4));
        }
    }
}

/* ------------------------------------------------------------------ Q6_K */
static const fit_spec Q6_FIT = {16, 32, FIT_SYMMETRIC, 0, 0, 0, 0};

static void weights_q6(const float *x, const float *qw, float *w) {
    for (int l = 0; l < QK_K; l++) w[l] = qw ? qw[l] : x[l] * x[l];
}

static void finish_q6(const float *x, const float *qw, const float *w, const float *scales,
                      const float *mins, uint8_t *L, void *out) {
    (void)qw, (void)w, (void)mins;
    block_q6_K *y = out;
    float max_scale = 0, max_abs = 0;
    for (int ib = 0; ib < QK_K / 16; ib++) {
        float a = fabsf(scales[ib]);
        if (a > max_abs) { max_abs = a; max_scale = scales[ib]; }
    }
    memset(y, 0, sizeof *y);
    if (max_abs < EPS) return; /* d = 0, every code 0 */
    float iscale = -128.0f / max_scale;
    y->d = f2h(1 / iscale);
    for (int ib = 0; ib < QK_K / 16; ib++)
        y->scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < QK_K / 16; j++) {
        float d = h2f(y->d) * y->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++)
            L[16 * j + ii] = (uint8_t)(imax(-32, imin(31, nearest_int(x[16 * j + ii] / d))) + 32);
    }
    for (int j = 0; j < QK_K; j += 128) {
        uint8_t *ql = y->ql + j / 2, *qh = y->qh + j / 4;
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

/* ------------------------------------------------------------------ the run */
typedef struct {
    int type, bytes;
    const fit_spec *ref, *imp; /* the fits without / with importance weights */
    void (*weights)(const float *x, const float *qw, float *w);
    void (*finish)(const float *x, const float *qw, const float *w, const float *scales,
                   const float *mins, uint8_t *L, void *out);
} kformat;

static const kformat KFORMATS[] = {
    {LC_GGUF_Q2_K, sizeof(block_q2_K), &Q2_REF, &Q2_IMP, weights_q2, finish_q2},
    {LC_GGUF_Q3_K, sizeof(block_q3_K), &Q3_REF, &Q3_IMP, weights_q3, finish_q3},
    {LC_GGUF_Q4_K, sizeof(block_q4_K), &Q4_REF, &Q4_IMP, weights_q45, finish_q4},
    {LC_GGUF_Q5_K, sizeof(block_q5_K), &Q5_REF, &Q5_IMP, weights_q45, finish_q5},
    {LC_GGUF_Q6_K, sizeof(block_q6_K), &Q6_FIT, &Q6_FIT, weights_q6, finish_q6},
};

void lc_kquant_quantize(int type, const float *x, int64_t nb, const float *const *qw,
                        uint8_t *out, int simd) {
    const kformat *f = NULL;
    for (size_t i = 0; i < sizeof KFORMATS / sizeof KFORMATS[0]; i++)
        if (KFORMATS[i].type == type) f = &KFORMATS[i];
    float w[LC_KQ_RUN * QK_K], scales[LC_KQ_RUN * 16], mins[LC_KQ_RUN * 16];
    uint8_t L[LC_KQ_RUN * QK_K];
    /* ggml picks the weighted variant per call; a run is all one or all the other */
    const fit_spec *s = qw[0] ? f->imp : f->ref;
    for (int64_t b = 0; b < nb; b++) f->weights(x + b * QK_K, qw[b], w + b * QK_K);
    int per = QK_K / s->n;
    int with_w = f->weights != weights_q3 || qw[0];
    fit_groups(s, nb * per, x, with_w ? w : NULL, L, scales, mins, simd);
    for (int64_t b = 0; b < nb; b++)
        f->finish(x + b * QK_K, qw[b], w + b * QK_K, scales + b * per, mins + b * per,
                  L + b * QK_K, out + b * f->bytes);
}
void lc_dequantize_q2_K(const void *in, float *y) {
    const block_q2_K *b = in;
    float d = h2f(b->d), dmin = h2f(b->dmin);
    for (int e = 0; e < QK_K; e++) {
        uint8_t sc = b->scales[e / 16];
        int q = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        y[e] = d * (sc & 0xF) * q - dmin * (sc >> 4);
    }
}

void lc_dequantize_q3_K(const void *in, float *y) {
    const block_q3_K *b = in;
    float d_all = h2f(b->d);
    for (int e = 0; e < QK_K; e++) {
        float dl = d_all * get_scale_q3(e / 16, b->scales);
        int q = (b->qs[(e / 128) * 32 + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        int hi = (b->hmask[e % 32] >> (e / 32)) & 1;
        y[e] = dl * (q - (hi ? 0 : 4));
    }
}

/* Q4_K and Q5_K: code (low nibble, plus 16 when qh has its bit) * d * sc - dmin * m */
static void dequantize_affine32(uint16_t d16, uint16_t dmin16, const uint8_t *scales,
                                const uint8_t *qs, const uint8_t *qh, float *y) {
    float d = h2f(d16), dmin = h2f(dmin16);
    for (int j = 0; j < QK_K / 32; j++) {
        uint8_t sc, m;
        get_scale_min(j, scales, &sc, &m);
        float dl = d * sc, ml = dmin * m;
        const uint8_t *q = qs + 32 * (j / 2);
        int shift = 4 * (j % 2);
        for (int l = 0; l < 32; l++) {
            int hi = qh ? (qh[l] >> j) & 1 : 0;
            y[32 * j + l] = dl * (((q[l] >> shift) & 0x0f) + (hi ? 16 : 0)) - ml;
        }
    }
}

void lc_dequantize_q4_K(const void *in, float *y) {
    const block_q4_K *b = in;
    dequantize_affine32(b->d, b->dmin, b->scales, b->qs, NULL, y);
}

void lc_dequantize_q5_K(const void *in, float *y) {
    const block_q5_K *b = in;
    dequantize_affine32(b->d, b->dmin, b->scales, b->qs, b->qh, y);
}

void lc_dequantize_q6_K(const void *in, float *y) {
    const block_q6_K *b = in;
    float d = h2f(b->d);
    for (int e = 0; e < QK_K; e++) {
        int h = e / 128, r = e % 128;
        int lo = (b->ql[h * 64 + r % 64] >> (4 * (r / 64))) & 0x0f;
        int hi = (b->qh[h * 32 + r % 32] >> (2 * (r / 32))) & 0x03;
        y[e] = d * b->scales[e / 16] * ((lo | (hi << 4)) - 32);
    }
}
