/* quant.c: uniform (affine / symmetric) quantization kernels -- min/max reduction for
 * observers, quantize to integer codes, dense bit packing, dequantize, fake quantization
 * with its clipped-STE and LSQ gradients, and float16/bfloat16/float8 casts.
 *
 * Parameter layout.  Every kernel sees the tensor as a 3-D view (A, C, B) of a C-contiguous
 * array and a view mode (LC_QUANT_VIEWS) saying which parameter slot element (a, c, b) uses:
 *   tensor   slot 0                   (A = 1, C = 1, B = numel)
 *   channel  slot c                   (axis k: A = prod(shape[:k]), C = shape[k])
 *   group    slot a (C must be 1)     (runs of a group: A = numel / group, B = group)
 * So the parameter is constant along every run of B contiguous elements; the kernels
 * process such runs in fixed chunks of at most LC_BLOCK elements, one task per chunk.
 *
 * Scheduling: tasks are fixed blocks handed out dynamically (schedule(dynamic, 16)), so a
 * thread that the OS preempts on a busy machine does not hold up the others; results do not
 * depend on which thread runs a task (partials are indexed by task and combined in order).
 *
 * Rounding (LC_QUANT_ROUNDINGS, the three ways torch rounds; they differ only near ties):
 *   round_then_add  q = clamp(nearbyint(x * inv_s) + zp)     torch quint4x2, quant.quantize
 *   add_then_round  q = clamp(nearbyint(x * inv_s + zp))     torch quantize_per_channel
 *   fma_then_round  q = clamp(nearbyint(fma(x, inv_s, zp)))  torch quantize_per_tensor (fbgemm)
 * with inv_s = 1.0f / s in float32 and round half to even.  Only fma_then_round fuses; the
 * build's -ffp-contract=off keeps the others unfused.  The scalar code is
 * the definition; the AVX-512 / AVX2 paths give the same bits (roundscale/round with
 * round-to-nearest-even, no FMA anywhere).
 */
#include "litecomp.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>

#define CHUNK 1024 /* floats converted at a time for non-f32 inputs */

/* Code tables (docs/conventions.md): the view modes and rounding rules above, exported as
 * _C.quant_views and _C.quant_roundings. */
#define QUANT_VIEWS(X) X(VIEW_TENSOR, "tensor") X(VIEW_CHANNEL, "channel") X(VIEW_GROUP, "group")
#define QUANT_ROUNDINGS(X)                                                              \
    X(ROUND_THEN_ADD, "round_then_add") X(ADD_THEN_ROUND, "add_then_round")              \
    X(FMA_THEN_ROUND, "fma_then_round")
enum { QUANT_VIEWS(LC_CODE_ENUM) VIEW_NKINDS };
enum { QUANT_ROUNDINGS(LC_CODE_ENUM) ROUND_NKINDS };

typedef struct {
    int64_t A, C, B;
    int mode;
} qview;

static inline int64_t slot_of(const qview *v, int64_t a, int64_t c) {
    return v->mode == VIEW_TENSOR ? 0 : v->mode == VIEW_CHANNEL ? c : a;
}
static inline int64_t nslots(const qview *v) {
    return v->mode == VIEW_TENSOR ? 1 : v->mode == VIEW_CHANNEL ? v->C : v->A;
}

/* Reductions over long runs: each run (a, c) of B elements is cut into chunks of LC_BLOCK,
 * one task per chunk, with one partial per task. */
static inline int64_t chunks_per_run(const qview *v) { return v->B ? lc_nblocks(v->B, LC_BLOCK) : 0; }

/* Per-channel views with short runs (B < SHORT_RUN, e.g. a channel axis that is last) would
 * make one task per few elements; reductions then give each slot one task that walks its
 * runs a = 0..A-1 in order (no partials), and elementwise kernels use flat blocks. */
#define SHORT_RUN 64
static inline int short_runs(const qview *v) { return v->mode == VIEW_CHANNEL && v->B < SHORT_RUN; }

/* Elementwise kernels: flat blocks of LC_BLOCK elements, each cut where a run ends, so the
 * parameter slot is constant on every segment.  seg_next() returns the end of the segment
 * starting at pos (within [pos, end)) and its slot. */
static inline int64_t seg_next(const qview *v, int64_t pos, int64_t end, int64_t *slot) {
    int64_t run = pos / v->B, stop = (run + 1) * v->B;
    *slot = slot_of(v, run / v->C, run % v->C);
    return stop < end ? stop : end;
}

/* ------------------------------------------------------------------ min / max */
/* Per slot min and max over its elements; any NaN or inf -> LC_ERR_NONFINITE.  min/max are
 * exact, so the per-task partials can be combined in any fixed order; zeros come out +0.0. */
static void minmax_run(const float *p, int64_t n, float *mn, float *mx, int *bad) {
    float lo = INFINITY, hi = -INFINITY;
    int nonfinite = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = p[i];
        nonfinite |= !(fabsf(v) < INFINITY); /* true for NaN and inf */
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if (lo < *mn) *mn = lo;
    if (hi > *mx) *mx = hi;
    *bad |= nonfinite;
}

#ifdef LC_X86
LC_TARGET_AVX512 static void minmax_run_avx512(const float *p, int64_t n, float *mn, float *mx,
                                               int *bad) {
    __m512 lo = _mm512_set1_ps(INFINITY), hi = _mm512_set1_ps(-INFINITY);
    __m512 amax = _mm512_setzero_ps();
    __mmask16 nan = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(p + i);
        nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
        lo = _mm512_min_ps(lo, v);
        hi = _mm512_max_ps(hi, v);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
    }
    float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
    if (nan || !(_mm512_reduce_max_ps(amax) < INFINITY)) *bad = 1;
    if (l < *mn) *mn = l;
    if (h > *mx) *mx = h;
    minmax_run(p + i, n - i, mn, mx, bad);
}
#endif

static void minmax_f32(const float *p, int64_t n, float *mn, float *mx, int *bad) {
#ifdef LC_X86
    if (lc_simd() >= LC_SIMD_AVX512) { minmax_run_avx512(p, n, mn, mx, bad); return; }
#endif
    minmax_run(p, n, mn, mx, bad);
}

static void minmax_any(const void *x, int code, int64_t start, int64_t n, float *mn, float *mx,
                       int *bad) {
    if (code == LC_F32) { minmax_f32((const float *)x + start, n, mn, mx, bad); return; }
    float buf[CHUNK];
    for (int64_t s = 0; s < n; s += CHUNK) {
        int64_t len = n - s < CHUNK ? n - s : CHUNK;
        lc_to_f32(x, code, start + s, len, buf);
        minmax_f32(buf, len, mn, mx, bad);
    }
}

static lc_status quant_minmax(const void *x, int code, const qview *v, float *mn, float *mx) {
    int64_t ns = nslots(v), cpr = chunks_per_run(v), ntasks = v->A * v->C * cpr;
    if (short_runs(v)) {
        int bad = 0;
        LC_OMP(parallel for num_threads(lc_threads_for(v->A * v->C * v->B)) schedule(dynamic, 16) reduction(|:bad))
        for (int64_t c = 0; c < v->C; c++) {
            float lo = INFINITY, hi = -INFINITY;
            int b = 0;
            for (int64_t a = 0; a < v->A; a++) minmax_any(x, code, (a * v->C + c) * v->B, v->B, &lo, &hi, &b);
            mn[c] = lo == 0.0f ? 0.0f : lo;
            mx[c] = hi == 0.0f ? 0.0f : hi;
            bad |= b;
        }
        return bad ? LC_ERR_NONFINITE : LC_OK;
    }
    float *tmn = malloc((size_t)(ntasks ? ntasks : 1) * 2 * sizeof(float));
    int *tbad = calloc((size_t)(ntasks ? ntasks : 1), sizeof(int));
    if (!tmn || !tbad) { free(tmn); free(tbad); return LC_ERR_NOMEM; }
    float *tmx = tmn + (ntasks ? ntasks : 1);
    LC_OMP(parallel for num_threads(lc_threads_for(v->A * v->C * v->B)) schedule(dynamic, 16))
    for (int64_t t = 0; t < ntasks; t++) {
        int64_t run = t / cpr, k = t % cpr;
        int64_t off = run * v->B + k * LC_BLOCK;
        int64_t len = v->B - k * LC_BLOCK < LC_BLOCK ? v->B - k * LC_BLOCK : LC_BLOCK;
        tmn[t] = INFINITY; tmx[t] = -INFINITY;
        minmax_any(x, code, off, len, &tmn[t], &tmx[t], &tbad[t]);
    }
    int bad = 0;
    for (int64_t s = 0; s < ns; s++) { mn[s] = INFINITY; mx[s] = -INFINITY; }
    for (int64_t t = 0; t < ntasks; t++) {
        int64_t run = t / cpr, s = slot_of(v, run / v->C, run % v->C);
        if (tmn[t] < mn[s]) mn[s] = tmn[t];
        if (tmx[t] > mx[s]) mx[s] = tmx[t];
        bad |= tbad[t];
    }
    for (int64_t s = 0; s < ns; s++) {
        if (mn[s] == 0.0f) mn[s] = 0.0f;
        if (mx[s] == 0.0f) mx[s] = 0.0f;
    }
    free(tmn); free(tbad);
    return bad ? LC_ERR_NONFINITE : LC_OK;
}

/* ------------------------------------------------------------------ quantize */
/* One run chunk with a fixed (inv_s, zp): codes written as int32 then narrowed by the caller's
 * out type.  lo = qmin - zp and hi = qmax - zp are applied to the rounded value in float,
 * which equals clamping zp + r (r is an integer-valued float, exact below 2^24). */
static inline int32_t quantize_one(float x, float inv_s, float pre, int fused, float lo, float hi,
                                   int32_t zp) {
    float r = lc_rne(fused ? fmaf(x, inv_s, pre) : x * inv_s + pre);
    r = r < lo ? lo : r;
    r = r > hi ? hi : r;
    return (int32_t)r + zp;
}

static void quantize_chunk_scalar(const float *x, int64_t n, float inv_s, float pre, int fused,
                                  int32_t zp,
                                  int32_t qmin, int32_t qmax, void *out, int out_signed) {
    float lo = (float)(qmin - zp), hi = (float)(qmax - zp);
    if (out_signed) {
        int8_t *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = (int8_t)quantize_one(x[i], inv_s, pre, fused, lo, hi, zp);
    } else {
        uint8_t *o = out;
        for (int64_t i = 0; i < n; i++) o[i] = (uint8_t)quantize_one(x[i], inv_s, pre, fused, lo, hi, zp);
    }
}

#ifdef LC_X86
LC_TARGET_AVX512 static int64_t quantize_chunk_avx512(const float *x, int64_t n, float inv_s,
                                                      float pre, int fused, int32_t zp, int32_t qmin, int32_t qmax,
                                                      void *out) {
    const __m512 vinv = _mm512_set1_ps(inv_s), vpre = _mm512_set1_ps(pre);
    const __m512 lo = _mm512_set1_ps((float)(qmin - zp)), hi = _mm512_set1_ps((float)(qmax - zp));
    const __m512i vzp = _mm512_set1_epi32(zp);
    uint8_t *o = out;
    int64_t i = 0;
    __mmask16 bad = 0;
    const __m512 inf = _mm512_set1_ps(INFINITY);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        bad |= _mm512_cmp_ps_mask(_mm512_abs_ps(v), inf, _CMP_NLT_UQ);
        v = fused ? _mm512_fmadd_ps(v, vinv, vpre) : _mm512_add_ps(_mm512_mul_ps(v, vinv), vpre);
        __m512 r = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
        __m512i q = _mm512_add_epi32(_mm512_cvtps_epi32(r), vzp);
        _mm_storeu_si128((__m128i *)(o + i), _mm512_cvtepi32_epi8(q)); /* truncating narrow */
    }
    return bad ? 0 : i; /* a non-finite value: let the scalar pass find it */
}

LC_TARGET_AVX2 static int64_t quantize_chunk_avx2(const float *x, int64_t n, float inv_s,
                                                  float pre, int fused, int32_t zp, int32_t qmin, int32_t qmax,
                                                  void *out) {
    const __m256 vinv = _mm256_set1_ps(inv_s), vpre = _mm256_set1_ps(pre);
    const __m256 lo = _mm256_set1_ps((float)(qmin - zp)), hi = _mm256_set1_ps((float)(qmax - zp));
    const __m256i vzp = _mm256_set1_epi32(zp);
    uint8_t *o = out;
    int32_t tmp[8];
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        v = fused ? _mm256_fmadd_ps(v, vinv, vpre) : _mm256_add_ps(_mm256_mul_ps(v, vinv), vpre);
        __m256 r = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        _mm256_storeu_si256((__m256i *)tmp, _mm256_add_epi32(_mm256_cvtps_epi32(r), vzp));
        for (int j = 0; j < 8; j++) o[i + j] = (uint8_t)tmp[j];
    }
    return i;
}
#endif

/* max/min compare order: NaN never reaches here (inputs are checked finite). */
/* Returns 1 when the chunk holds NaN or inf (the AVX-512 loop checks as it goes; other
 * paths check separately). */
static int quantize_chunk(const float *x, int64_t n, float inv_s, float pre, int fused, int32_t zp,
                          int32_t qmin, int32_t qmax, void *out, int out_signed) {
    int64_t i = 0, checked = 0;
#ifdef LC_X86
    int level = lc_simd();
    if (level >= LC_SIMD_AVX512)
        checked = i = quantize_chunk_avx512(x, n, inv_s, pre, fused, zp, qmin, qmax, out);
    else if (level >= LC_SIMD_AVX2)
        i = quantize_chunk_avx2(x, n, inv_s, pre, fused, zp, qmin, qmax, out);
#endif
    int bad = 0;
    for (int64_t j = checked; j < n; j++) bad |= !(fabsf(x[j]) < INFINITY);
    quantize_chunk_scalar(x + i, n - i, inv_s, pre, fused, zp, qmin, qmax, (uint8_t *)out + i,
                          out_signed);
    return bad;
}

static lc_status quant_affine(const void *x, int code, const qview *v, const float *scales,
                              const int32_t *zps, int32_t qmin, int32_t qmax, void *out,
                              int out_signed, int rounding) {
    int64_t n = v->A * v->C * v->B, nb = lc_nblocks(n, LC_BLOCK);
    int bad = 0;
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16) reduction(|:bad))
    for (int64_t t = 0; t < nb; t++) {
        int64_t end = (t + 1) * LC_BLOCK < n ? (t + 1) * LC_BLOCK : n;
        float buf[CHUNK];
        for (int64_t pos = t * LC_BLOCK, s, stop; pos < end; pos = stop) {
            stop = seg_next(v, pos, end, &s);
            float inv_s = 1.0f / scales[s];
            int zp_first = rounding != ROUND_THEN_ADD; /* zp joins the rounded sum */
            float pre = zp_first ? (float)zps[s] : 0.0f;
            for (int64_t c0 = pos; c0 < stop; c0 += CHUNK) {
                int64_t m = stop - c0 < CHUNK ? stop - c0 : CHUNK;
                const float *src;
                if (code == LC_F32) src = (const float *)x + c0;
                else { lc_to_f32(x, code, c0, m, buf); src = buf; }
                bad |= quantize_chunk(src, m, inv_s, pre, rounding == FMA_THEN_ROUND,
                                      zp_first ? 0 : zps[s], qmin, qmax, (uint8_t *)out + c0,
                                      out_signed);
            }
        }
    }
    return bad ? LC_ERR_NONFINITE : LC_OK;
}

/* ------------------------------------------------------------------ dequantize */
/* y = (q - zp) * s in float32: one rounding, no fused multiply-add. */
static lc_status dequant_affine(const void *q, int q_signed, const qview *v, const float *scales,
                                const int32_t *zps, float *out) {
    int64_t n = v->A * v->C * v->B, nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
    for (int64_t t = 0; t < nb; t++) {
        int64_t end = (t + 1) * LC_BLOCK < n ? (t + 1) * LC_BLOCK : n;
        for (int64_t pos = t * LC_BLOCK, s, stop; pos < end; pos = stop) {
            stop = seg_next(v, pos, end, &s);
            float sc = scales[s];
            int32_t zp = zps[s];
            if (q_signed) {
                const int8_t *p = q;
                for (int64_t i = pos; i < stop; i++) out[i] = (float)((int32_t)p[i] - zp) * sc;
            } else {
                const uint8_t *p = q;
                for (int64_t i = pos; i < stop; i++) out[i] = (float)((int32_t)p[i] - zp) * sc;
            }
        }
    }
    return LC_OK;
}

/* ------------------------------------------------------------------ fake quantization */
/* Forward y = (clamp(nearbyint(x*inv_s) + zp, qmin, qmax) - zp) * s, as torch computes it.
 * Backward (clipped STE): dx = dy where qmin <= nearbyint(x*inv_s) + zp <= qmax, else 0.
 * LSQ (learnable s, zp), per element, summed per slot in a fixed order:
 *   in range:  ds = (y - x) * inv_s * dy,  dzp = 0
 *   below:     ds = (qmin - zp) * dy,      dzp = -s * dy
 *   above:     ds = (qmax - zp) * dy,      dzp = -s * dy
 * Per-task partial sums (double) are combined in task order: thread-count independent. */
#ifdef LC_X86
/* The forward / clipped-STE backward of one run chunk with AVX-512; same bits as the scalar
 * loop below (roundscale is round-half-even; -0.0 + zp gives +0.0 in both).  Returns how
 * many elements it did; the caller finishes the tail. */
LC_TARGET_AVX512 static int64_t fake_chunk_avx512(const float *x, const float *dy, float *y,
                                                  float *dx, int64_t n, float sc, float inv_s,
                                                  int32_t zp, int32_t qmin, int32_t qmax,
                                                  int *bad) {
    const __m512 vinv = _mm512_set1_ps(inv_s), vs = _mm512_set1_ps(sc);
    const __m512 vz = _mm512_set1_ps((float)zp), lo = _mm512_set1_ps((float)qmin),
                 hi = _mm512_set1_ps((float)qmax), inf = _mm512_set1_ps(INFINITY);
    __mmask16 nonfinite = 0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 xv = _mm512_loadu_ps(x + i);
        nonfinite |= _mm512_cmp_ps_mask(_mm512_abs_ps(xv), inf, _CMP_NLT_UQ);
        __m512 r = _mm512_add_ps(_mm512_roundscale_ps(_mm512_mul_ps(xv, vinv),
                                                      _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                 vz);
        if (y) {
            __m512 qc = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
            _mm512_storeu_ps(y + i, _mm512_mul_ps(_mm512_sub_ps(qc, vz), vs));
        }
        if (dx) {
            __mmask16 in = _mm512_cmp_ps_mask(r, lo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(r, hi, _CMP_LE_OQ);
            _mm512_storeu_ps(dx + i, _mm512_maskz_mov_ps(in, _mm512_loadu_ps(dy + i)));
        }
    }
    *bad |= nonfinite != 0;
    return i;
}
#endif

/* One segment [off, off + len) with one slot's (s, zp); adds the LSQ sums to *gs / *gz when
 * they are given (then always in element order, scalar). */
static int fake_segment(const float *x, const float *dy, float *y, float *dx, int64_t off,
                        int64_t len, float sc, int32_t zp, int32_t qmin, int32_t qmax, double *gs,
                        double *gz) {
    float inv_s = 1.0f / sc;
    int bad = 0;
    int64_t start = off;
#ifdef LC_X86
    if (!gs && (y || (dy && dx)) && lc_simd() >= LC_SIMD_AVX512)
        start += fake_chunk_avx512(x + off, dy ? dy + off : NULL, y ? y + off : NULL,
                                   dy && dx ? dx + off : NULL, len, sc, inv_s, zp, qmin, qmax,
                                   &bad);
#endif
    for (int64_t i = start; i < off + len; i++) {
        float xv = x[i];
        bad |= !(fabsf(xv) < INFINITY);
        float r = lc_rne(xv * inv_s) + (float)zp;
        float qc = r < (float)qmin ? (float)qmin : r > (float)qmax ? (float)qmax : r;
        float yv = (qc - (float)zp) * sc;
        if (y) y[i] = yv;
        if (dy) {
            int inside = r >= (float)qmin && r <= (float)qmax;
            float g = dy[i];
            if (dx) dx[i] = inside ? g : 0.0f;
            if (gs) {
                if (inside) *gs += (double)((yv - xv) * inv_s) * (double)g;
                else {
                    *gs += (double)((r < (float)qmin ? qmin : qmax) - zp) * (double)g;
                    *gz += -(double)sc * (double)g;
                }
            }
        }
    }
    return bad;
}

static lc_status fake_quant(const float *x, const float *dy, const qview *v, const float *scales,
                            const int32_t *zps, int32_t qmin, int32_t qmax, float *y, float *dx,
                            double *dscale, double *dzp) {
    int bad = 0;
    if (!dscale) { /* elementwise: flat blocks */
        int64_t n = v->A * v->C * v->B, nb = lc_nblocks(n, LC_BLOCK);
        LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16) reduction(|:bad))
        for (int64_t t = 0; t < nb; t++) {
            int64_t end = (t + 1) * LC_BLOCK < n ? (t + 1) * LC_BLOCK : n;
            for (int64_t pos = t * LC_BLOCK, s, stop; pos < end; pos = stop) {
                stop = seg_next(v, pos, end, &s);
                bad |= fake_segment(x, dy, y, dx, pos, stop - pos, scales[s], zps[s], qmin, qmax,
                                    NULL, NULL);
            }
        }
        return bad ? LC_ERR_NONFINITE : LC_OK;
    }
    if (short_runs(v)) { /* LSQ, short runs: one task per slot, runs in order */
        LC_OMP(parallel for num_threads(lc_threads_for(v->A * v->C * v->B)) schedule(dynamic, 16) reduction(|:bad))
        for (int64_t c = 0; c < v->C; c++) {
            double gs = 0.0, gz = 0.0;
            for (int64_t a = 0; a < v->A; a++)
                bad |= fake_segment(x, dy, y, dx, (a * v->C + c) * v->B, v->B, scales[c], zps[c],
                                    qmin, qmax, &gs, &gz);
            dscale[c] = gs;
            dzp[c] = gz;
        }
        return bad ? LC_ERR_NONFINITE : LC_OK;
    }
    /* LSQ, long runs: one partial per run chunk, added per slot in task order */
    int64_t cpr = chunks_per_run(v), ntasks = v->A * v->C * cpr, ns = nslots(v);
    double *part = calloc((size_t)(ntasks ? ntasks : 1) * 2, sizeof(double));
    if (!part) return LC_ERR_NOMEM;
    LC_OMP(parallel for num_threads(lc_threads_for(v->A * v->C * v->B)) schedule(dynamic, 16) reduction(|:bad))
    for (int64_t t = 0; t < ntasks; t++) {
        int64_t run = t / cpr, k = t % cpr, s = slot_of(v, run / v->C, run % v->C);
        int64_t off = run * v->B + k * LC_BLOCK;
        int64_t len = v->B - k * LC_BLOCK < LC_BLOCK ? v->B - k * LC_BLOCK : LC_BLOCK;
        bad |= fake_segment(x, dy, y, dx, off, len, scales[s], zps[s], qmin, qmax, &part[2 * t],
                            &part[2 * t + 1]);
    }
    for (int64_t s = 0; s < ns; s++) dscale[s] = dzp[s] = 0.0;
    for (int64_t t = 0; t < ntasks; t++) {
        int64_t run = t / cpr, s = slot_of(v, run / v->C, run % v->C);
        dscale[s] += part[2 * t];
        dzp[s] += part[2 * t + 1];
    }
    free(part);
    return bad ? LC_ERR_NONFINITE : LC_OK;
}

/* ------------------------------------------------------------------ float casts */
/* Generic RNE encoder for the float8 formats: `ebits` exponent bits, `mbits` mantissa bits,
 * bias, largest finite magnitude `maxf`.  e4m3fn has no inf: values beyond max (after
 * rounding) become NaN (0x7f) unless saturating; e5m2 overflows to inf unless saturating. */
static inline uint8_t f32_to_f8(float f, int mbits, int bias, float maxf, int has_inf,
                                int saturate) {
    uint32_t u = lc_f32_bits(f);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    float a = fabsf(f);
    if (a != a) return has_inf ? (uint8_t)(sign | 0x7e) : (uint8_t)(sign | 0x7f);
    /* Quantise magnitude on the format's grid: spacing 2^(e - mbits) with e = max(floor(log2 a),
     * 1 - bias) so subnormals share the smallest exponent's spacing. */
    if (a == INFINITY) return has_inf ? (uint8_t)(sign | 0x7c) : (uint8_t)(sign | 0x7f);
    int e;
    frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    e -= 1;
    if (e < 1 - bias) e = 1 - bias;
    float step = ldexpf(1.0f, e - mbits);
    float r = nearbyintf(a / step) * step; /* exact: power-of-two scaling */
    if (r > maxf) {
        if (saturate) r = maxf;
        else return has_inf ? (uint8_t)(sign | 0x7c) : (uint8_t)(sign | 0x7f);
    }
    if (r == 0.0f) return sign;
    int re;
    float m = frexpf(r, &re);
    re -= 1; /* r = (2m) * 2^re, 2m in [1, 2) */
    if (re < 1 - bias) { /* subnormal: code = r / 2^(1-bias-mbits) */
        return (uint8_t)(sign | (uint32_t)(r / ldexpf(1.0f, 1 - bias - mbits)));
    }
    uint32_t man = (uint32_t)((2.0f * m - 1.0f) * (float)(1 << mbits));
    return (uint8_t)(sign | ((uint32_t)(re + bias) << mbits) | man);
}

static lc_status cast_float(const void *src, int code, int64_t n, void *dst, int out_code,
                            int saturate) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * LC_BLOCK, len = n - s < LC_BLOCK ? n - s : LC_BLOCK;
        float buf[CHUNK];
        for (int64_t c0 = 0; c0 < len; c0 += CHUNK) {
            int64_t m = len - c0 < CHUNK ? len - c0 : CHUNK, base = s + c0;
            lc_to_f32(src, code, base, m, buf);
            switch (out_code) {
            case LC_F32: memcpy((float *)dst + base, buf, (size_t)m * 4); break;
            case LC_F16: {
                uint16_t *o = (uint16_t *)dst + base;
                for (int64_t i = 0; i < m; i++) {
                    uint16_t h = lc_f32_to_f16(buf[i]);
                    if (saturate && (h & 0x7fffu) == 0x7c00u && fabsf(buf[i]) < INFINITY)
                        h = (uint16_t)((h & 0x8000u) | 0x7bffu);
                    o[i] = h;
                }
                break;
            }
            case LC_BF16: {
                uint16_t *o = (uint16_t *)dst + base;
                for (int64_t i = 0; i < m; i++) {
                    uint16_t h = lc_f32_to_bf16(buf[i]);
                    if (saturate && (h & 0x7fffu) == 0x7f80u && fabsf(buf[i]) < INFINITY)
                        h = (uint16_t)((h & 0x8000u) | 0x7f7fu);
                    o[i] = h;
                }
                break;
            }
            case LC_F8E4M3FN: {
                uint8_t *o = (uint8_t *)dst + base;
                for (int64_t i = 0; i < m; i++) o[i] = f32_to_f8(buf[i], 3, 7, 448.0f, 0, saturate);
                break;
            }
            case LC_F8E5M2: {
                uint8_t *o = (uint8_t *)dst + base;
                for (int64_t i = 0; i < m; i++)
                    o[i] = f32_to_f8(buf[i], 2, 15, 57344.0f, 1, saturate);
                break;
            }
            }
        }
    }
    return LC_OK;
}

/* ------------------------------------------------------------------ error statistics */
/* sum x^2, sum y^2, sum x*y, sum (x-y)^2 (double, per LC_BLOCK partials added in block order)
 * and max |x - y|: what SQNR, cosine similarity and max error need, in one pass. */
typedef struct { double xx, yy, xy, ee, maxe; } err_stats;

static void error_block(const void *x, int xcode, const float *y, int64_t start, int64_t n,
                        err_stats *e) {
    float buf[CHUNK];
    double xx = 0, yy = 0, xy = 0, ee = 0, mx = 0;
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
        int64_t m = n - c0 < CHUNK ? n - c0 : CHUNK;
        lc_to_f32(x, xcode, start + c0, m, buf);
        for (int64_t i = 0; i < m; i++) {
            double a = buf[i], b = y[start + c0 + i], d = a - b;
            xx += a * a; yy += b * b; xy += a * b; ee += d * d;
            if (fabs(d) > mx) mx = fabs(d);
        }
    }
    e->xx = xx; e->yy = yy; e->xy = xy; e->ee = ee; e->maxe = mx;
}

static lc_status error_stats(const void *x, int xcode, const float *y, int64_t n, err_stats *out) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    err_stats *parts = malloc((size_t)(nb ? nb : 1) * sizeof *parts);
    if (!parts) return LC_ERR_NOMEM;
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * LC_BLOCK, len = n - s < LC_BLOCK ? n - s : LC_BLOCK;
        error_block(x, xcode, y, s, len, &parts[b]);
    }
    memset(out, 0, sizeof *out);
    for (int64_t b = 0; b < nb; b++) {
        out->xx += parts[b].xx; out->yy += parts[b].yy; out->xy += parts[b].xy;
        out->ee += parts[b].ee;
        if (parts[b].maxe > out->maxe) out->maxe = parts[b].maxe;
    }
    free(parts);
    return LC_OK;
}

/* ------------------------------------------------------------------ histograms */
/* torch.histc per slot: the bin of v is (int64)((v - lo) * bins / (hi - lo)) in float32, as
 * torch's CPU histogram kernel computes it (verified against torch.histc); v == hi lands in
 * the last bin; values outside [lo, hi] are not counted; lo == hi widens to [lo - 1, hi + 1]
 * as torch does.  Counts are exact (int64). */
static inline void hist_add(float v, float lo, float hi, int64_t bins, int64_t *h) {
    if (!(v >= lo && v <= hi)) return;
    int64_t pos = (int64_t)((v - lo) * (float)bins / (hi - lo));
    if (pos >= bins) pos = bins - 1;
    if (pos < 0) pos = 0;
    h[pos]++;
}

#ifdef LC_X86
/* The same bin formula 16 lanes at a time (IEEE sub/mul/div are exact-rounded, so the bins
 * equal the scalar ones); the counting stays scalar.  Returns how many it did. */
LC_TARGET_AVX512 static int64_t hist_avx512(const float *p, int64_t n, float lo, float hi,
                                            int64_t bins, int64_t *h) {
    const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
    const __m512 vb = _mm512_set1_ps((float)bins), width = _mm512_set1_ps(hi - lo);
    const __m512i last = _mm512_set1_epi32((int32_t)(bins - 1)), zero = _mm512_setzero_si512();
    int32_t pos[16];
    int64_t i = 0;
    if (bins > INT32_MAX) return 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(p + i);
        __mmask16 in = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LE_OQ);
        __m512 t = _mm512_div_ps(_mm512_mul_ps(_mm512_sub_ps(v, vlo), vb), width);
        __m512i q = _mm512_max_epi32(_mm512_min_epi32(_mm512_cvttps_epi32(t), last), zero);
        _mm512_storeu_si512(pos, q);
        while (in) {
            int j = __builtin_ctz(in);
            h[pos[j]]++;
            in &= (__mmask16)(in - 1);
        }
    }
    return i;
}
#endif

static void hist_run(const void *x, int code, int64_t off, int64_t len, float lo, float hi,
                     int64_t bins, int64_t *h) {
    if (lo == hi) { lo -= 1.0f; hi += 1.0f; }
    float buf[CHUNK];
    for (int64_t c0 = 0; c0 < len; c0 += CHUNK) {
        int64_t m = len - c0 < CHUNK ? len - c0 : CHUNK, i = 0;
        const float *p;
        if (code == LC_F32) p = (const float *)x + off + c0;
        else { lc_to_f32(x, code, off + c0, m, buf); p = buf; }
#ifdef LC_X86
        if (lc_simd() >= LC_SIMD_AVX512) i = hist_avx512(p, m, lo, hi, bins, h);
#endif
        for (; i < m; i++) hist_add(p[i], lo, hi, bins, h);
    }
}

static lc_status quant_hist(const void *x, int code, const qview *v, const float *lo,
                            const float *hi, int64_t bins, int64_t *out) {
    int64_t ns = nslots(v);
    memset(out, 0, (size_t)(ns * bins) * sizeof(int64_t));
    if (v->mode == VIEW_TENSOR) { /* one slot: per-chunk partial histograms added in chunk order */
        int64_t n = v->A * v->C * v->B, nb = lc_nblocks(n, LC_BLOCK);
        int64_t *part = calloc((size_t)((nb ? nb : 1) * bins), sizeof(int64_t));
        if (!part) return LC_ERR_NOMEM;
        LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
        for (int64_t b = 0; b < nb; b++) {
            int64_t s = b * LC_BLOCK, len = n - s < LC_BLOCK ? n - s : LC_BLOCK;
            hist_run(x, code, s, len, lo[0], hi[0], bins, part + b * bins);
        }
        for (int64_t b = 0; b < nb; b++)
            for (int64_t i = 0; i < bins; i++) out[i] += part[b * bins + i];
        free(part);
        return LC_OK;
    }
    /* per slot: each slot's runs are visited by one task (counts are order-free anyway) */
    LC_OMP(parallel for num_threads(lc_threads_for(v->A * v->C * v->B)) schedule(dynamic, 16))
    for (int64_t s = 0; s < ns; s++) {
        if (v->mode == VIEW_CHANNEL)
            for (int64_t a = 0; a < v->A; a++)
                hist_run(x, code, (a * v->C + s) * v->B, v->B, lo[s], hi[s], bins, out + s * bins);
        else
            hist_run(x, code, s * v->B, v->B, lo[s], hi[s], bins, out + s * bins);
    }
    return LC_OK;
}

/* ------------------------------------------------------------------ Python entry points */
static int parse_view(PyArrayObject *x, long long A, long long C, long long B, int mode, qview *v) {
    if (A < 0 || C < 0 || B < 0 || mode < 0 || mode >= VIEW_NKINDS ||
        (mode == VIEW_GROUP && C != 1) ||
        A * C * B != (long long)PyArray_SIZE(x)) {
        PyErr_Format(lc_ShapeError, "x: view (%lld, %lld, %lld) mode %d does not fit %lld elements",
                     A, C, B, mode, (long long)PyArray_SIZE(x));
        return -1;
    }
    v->A = A; v->C = C; v->B = B; v->mode = mode;
    return 0;
}

static int check_params(const qview *v, PyArrayObject *s, PyArrayObject *z) {
    if (lc_check_array(s, "scales", LC_F32, 0) < 0) return -1;
    if (z && lc_check_array(z, "zero_points", LC_I32, 0) < 0) return -1;
    int64_t ns = nslots(v);
    if (PyArray_SIZE(s) != ns || (z && PyArray_SIZE(z) != ns)) {
        PyErr_Format(lc_ShapeError, "scales: expected %lld values", (long long)ns);
        return -1;
    }
    return 0;
}

static PyObject *py_quant_minmax(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *mn, *mx;
    int code, mode;
    long long A, C, B;
    if (!PyArg_ParseTuple(args, "O!iLLLiO!O!", &PyArray_Type, &x, &code, &A, &C, &B, &mode,
                          &PyArray_Type, &mn, &PyArray_Type, &mx))
        return NULL;
    qview v;
    if (lc_check_array(x, "x", code, 0) < 0 || parse_view(x, A, C, B, mode, &v) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    if (lc_check_array(mn, "min", LC_F32, 1) < 0 || lc_check_array(mx, "max", LC_F32, 1) < 0)
        return NULL;
    if (PyArray_SIZE(mn) != nslots(&v) || PyArray_SIZE(mx) != nslots(&v)) {
        PyErr_SetString(lc_ShapeError, "min: wrong number of slots");
        return NULL;
    }
    const void *p = PyArray_DATA(x);
    float *a = PyArray_DATA(mn), *b = PyArray_DATA(mx);
    lc_status st;
    LC_NOGIL_BEGIN
    st = quant_minmax(p, code, &v, a, b);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_quant_affine(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *s, *z, *out;
    int code, mode, qmin, qmax, rounding = ROUND_THEN_ADD;
    long long A, C, B;
    if (!PyArg_ParseTuple(args, "O!iLLLiO!O!iiO!|i", &PyArray_Type, &x, &code, &A, &C, &B, &mode,
                          &PyArray_Type, &s, &PyArray_Type, &z, &qmin, &qmax, &PyArray_Type, &out,
                          &rounding))
        return NULL;
    if (rounding < 0 || rounding >= ROUND_NKINDS) {
        PyErr_Format(lc_ArgumentError, "rounding: unknown rounding code %d", rounding);
        return NULL;
    }
    qview v;
    if (lc_check_array(x, "x", code, 0) < 0 || parse_view(x, A, C, B, mode, &v) < 0 ||
        check_params(&v, s, z) < 0)
        return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    int out_signed = PyArray_TYPE(out) == NPY_INT8;
    if (lc_check_array(out, "out", out_signed ? LC_I8 : LC_U8, 1) < 0) return NULL;
    if (PyArray_SIZE(out) != PyArray_SIZE(x) || qmin > qmax || qmin < (out_signed ? -128 : 0) ||
        qmax > (out_signed ? 127 : 255)) {
        PyErr_SetString(lc_ArgumentError, "out: size or [qmin, qmax] does not fit the output");
        return NULL;
    }
    const float *sc = PyArray_DATA(s);
    const int32_t *zp = PyArray_DATA(z);
    int64_t ns = nslots(&v);
    for (int64_t i = 0; i < ns; i++) {
        if (!(sc[i] > 0.0f) || !(1.0f / sc[i] < INFINITY) || !(sc[i] < INFINITY)) {
            PyErr_Format(lc_ArgumentError, "scales: must be positive, finite and have a finite "
                         "float32 inverse, got %g at %lld", (double)sc[i], (long long)i);
            return NULL;
        }
        if (zp[i] < qmin || zp[i] > qmax) {
            PyErr_Format(lc_ArgumentError, "zero_points: %d at %lld is outside [%d, %d]",
                         zp[i], (long long)i, qmin, qmax);
            return NULL;
        }
    }
    const void *p = PyArray_DATA(x);
    void *o = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = quant_affine(p, code, &v, sc, zp, qmin, qmax, o, out_signed, rounding);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_dequant_affine(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *q, *s, *z, *out;
    int mode;
    long long A, C, B;
    if (!PyArg_ParseTuple(args, "O!LLLiO!O!O!", &PyArray_Type, &q, &A, &C, &B, &mode,
                          &PyArray_Type, &s, &PyArray_Type, &z, &PyArray_Type, &out))
        return NULL;
    int q_signed = PyArray_TYPE(q) == NPY_INT8;
    qview v;
    if (lc_check_array(q, "q", q_signed ? LC_I8 : LC_U8, 0) < 0 ||
        parse_view(q, A, C, B, mode, &v) < 0 || check_params(&v, s, z) < 0 ||
        lc_check_array(out, "out", LC_F32, 1) < 0)
        return NULL;
    if (PyArray_SIZE(out) != PyArray_SIZE(q)) {
        PyErr_SetString(lc_ShapeError, "out: size does not match q");
        return NULL;
    }
    const void *p = PyArray_DATA(q);
    const float *sc = PyArray_DATA(s);
    const int32_t *zp = PyArray_DATA(z);
    float *o = PyArray_DATA(out);
    LC_NOGIL_BEGIN
    dequant_affine(p, q_signed, &v, sc, zp, o);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyObject *py_pack_bits(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *c, *o;
    int bits, unpack;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "O!LLiO!p", &PyArray_Type, &c, &rows, &cols, &bits,
                          &PyArray_Type, &o, &unpack))
        return NULL;
    if (bits < 1 || bits > 8) return lc_raise_status(LC_ERR_RANGE, "bits");
    PyArrayObject *codes = unpack ? o : c, *packed = unpack ? c : o;
    long long rowbytes = (cols * bits + 7) / 8;
    if (lc_check_array(codes, "codes", LC_U8, unpack) < 0 ||
        lc_check_array(packed, "packed", LC_U8, !unpack) < 0)
        return NULL;
    if (rows < 0 || cols < 0 || PyArray_SIZE(codes) != rows * cols ||
        PyArray_SIZE(packed) != rows * rowbytes) {
        PyErr_Format(lc_ShapeError, "packed: expected %lld x %lld bytes for %lld x %lld codes",
                     rows, rowbytes, rows, cols);
        return NULL;
    }
    uint8_t *cp = PyArray_DATA(codes), *pp = PyArray_DATA(packed);
    LC_NOGIL_BEGIN
    LC_OMP(parallel for num_threads(lc_threads_for(rows * cols)) schedule(dynamic, 16))
    for (long long r = 0; r < rows; r++) {
        if (unpack) lc_unpack_row(pp + r * rowbytes, cols, bits, cp + r * cols);
        else lc_pack_row(cp + r * cols, cols, bits, pp + r * rowbytes, rowbytes);
    }
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyObject *py_fake_quant(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *s, *z;
    PyObject *dy_o, *y_o, *dx_o, *ds_o, *dz_o;
    int mode, qmin, qmax;
    long long A, C, B;
    if (!PyArg_ParseTuple(args, "O!LLLiO!O!iiOOOOO", &PyArray_Type, &x, &A, &C, &B, &mode,
                          &PyArray_Type, &s, &PyArray_Type, &z, &qmin, &qmax, &dy_o, &y_o, &dx_o,
                          &ds_o, &dz_o))
        return NULL;
    qview v;
    if (lc_check_array(x, "x", LC_F32, 0) < 0 || parse_view(x, A, C, B, mode, &v) < 0 ||
        check_params(&v, s, z) < 0)
        return NULL;
    PyArrayObject *arrs[5] = {NULL, NULL, NULL, NULL, NULL};
    PyObject *objs[5] = {dy_o, y_o, dx_o, ds_o, dz_o};
    const char *names[5] = {"grad_y", "y", "grad_x", "grad_scale", "grad_zero_point"};
    for (int i = 0; i < 5; i++) {
        if (objs[i] == Py_None) continue;
        if (!PyArray_Check(objs[i])) return lc_raise_status(LC_ERR_DTYPE, names[i]);
        arrs[i] = (PyArrayObject *)objs[i];
        int code = i >= 3 ? LC_F64 : LC_F32;
        if (lc_check_array(arrs[i], names[i], code, i > 0) < 0) return NULL;
        int64_t want = i >= 3 ? nslots(&v) : PyArray_SIZE(x);
        if (PyArray_SIZE(arrs[i]) != want) {
            PyErr_Format(lc_ShapeError, "%s: expected %lld elements", names[i], (long long)want);
            return NULL;
        }
    }
    if ((arrs[3] == NULL) != (arrs[4] == NULL) || (arrs[3] && !arrs[0])) {
        PyErr_SetString(lc_ArgumentError, "grad_scale: needs grad_zero_point and grad_y");
        return NULL;
    }
    const float *sc = PyArray_DATA(s);
    for (int64_t i = 0; i < nslots(&v); i++)
        if (!(sc[i] > 0.0f) || !(sc[i] < INFINITY) || !(1.0f / sc[i] < INFINITY))
            return lc_raise_status(LC_ERR_RANGE, "scales");
    const float *xp = PyArray_DATA(x);
    const int32_t *zp = PyArray_DATA(z);
    const float *dyp = arrs[0] ? PyArray_DATA(arrs[0]) : NULL;
    float *yp = arrs[1] ? PyArray_DATA(arrs[1]) : NULL, *dxp = arrs[2] ? PyArray_DATA(arrs[2]) : NULL;
    double *dsp = arrs[3] ? PyArray_DATA(arrs[3]) : NULL, *dzp = arrs[4] ? PyArray_DATA(arrs[4]) : NULL;
    lc_status st;
    LC_NOGIL_BEGIN
    st = fake_quant(xp, dyp, &v, sc, zp, qmin, qmax, yp, dxp, dsp, dzp);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_cast_float(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *src, *dst;
    int code, out_code, saturate;
    if (!PyArg_ParseTuple(args, "O!iO!ip", &PyArray_Type, &src, &code, &PyArray_Type, &dst,
                          &out_code, &saturate))
        return NULL;
    if (lc_check_array(src, "x", code, 0) < 0 || lc_check_array(dst, "out", out_code, 1) < 0)
        return NULL;
    if (!lc_is_float_code(code) || !lc_is_float_code(out_code) || out_code == LC_F64)
        return lc_raise_status(LC_ERR_DTYPE, "dtype");
    if (PyArray_SIZE(src) != PyArray_SIZE(dst)) {
        PyErr_SetString(lc_ShapeError, "out: size does not match x");
        return NULL;
    }
    const void *s = PyArray_DATA(src);
    void *d = PyArray_DATA(dst);
    int64_t n = PyArray_SIZE(src);
    LC_NOGIL_BEGIN
    cast_float(s, code, n, d, out_code, saturate);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyObject *py_error_stats(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *y;
    int code;
    if (!PyArg_ParseTuple(args, "O!iO!", &PyArray_Type, &x, &code, &PyArray_Type, &y)) return NULL;
    if (lc_check_array(x, "x", code, 0) < 0 || lc_check_array(y, "y", LC_F32, 0) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    if (PyArray_SIZE(x) != PyArray_SIZE(y)) {
        PyErr_SetString(lc_ShapeError, "y: size does not match x");
        return NULL;
    }
    err_stats e;
    lc_status st;
    const void *xp = PyArray_DATA(x);
    const float *yp = PyArray_DATA(y);
    int64_t n = PyArray_SIZE(x);
    LC_NOGIL_BEGIN
    st = error_stats(xp, code, yp, n, &e);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    return Py_BuildValue("(ddddd)", e.xx, e.yy, e.xy, e.ee, e.maxe);
}

static PyObject *py_quant_hist(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *lo, *hi, *out;
    int code, mode;
    long long A, C, B, bins;
    if (!PyArg_ParseTuple(args, "O!iLLLiO!O!LO!", &PyArray_Type, &x, &code, &A, &C, &B, &mode,
                          &PyArray_Type, &lo, &PyArray_Type, &hi, &bins, &PyArray_Type, &out))
        return NULL;
    qview v;
    if (lc_check_array(x, "x", code, 0) < 0 || parse_view(x, A, C, B, mode, &v) < 0 ||
        lc_check_array(lo, "min", LC_F32, 0) < 0 || lc_check_array(hi, "max", LC_F32, 0) < 0 ||
        lc_check_array(out, "out", LC_I64, 1) < 0)
        return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    int64_t ns = nslots(&v);
    if (bins < 1 || PyArray_SIZE(lo) != ns || PyArray_SIZE(hi) != ns || PyArray_SIZE(out) != ns * bins) {
        PyErr_SetString(lc_ShapeError, "out: sizes do not fit the slots and bins");
        return NULL;
    }
    const void *xp = PyArray_DATA(x);
    const float *lp = PyArray_DATA(lo), *hp = PyArray_DATA(hi);
    int64_t *op = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = quant_hist(xp, code, &v, lp, hp, bins, op);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"quant_hist", py_quant_hist, METH_VARARGS,
     "quant_hist(x, code, A, C, B, mode, min, max, bins, out): torch.histc per slot."},
    {"error_stats", py_error_stats, METH_VARARGS,
     "error_stats(x, code, y) -> (sum x^2, sum y^2, sum xy, sum (x-y)^2, max |x-y|)."},
    {"quant_minmax", py_quant_minmax, METH_VARARGS,
     "quant_minmax(x, code, A, C, B, mode, min_out, max_out): per-slot min/max (finite only)."},
    {"quant_affine", py_quant_affine, METH_VARARGS,
     "quant_affine(x, code, A, C, B, mode, scales, zps, qmin, qmax, out[, rounding]): integer codes."},
    {"dequant_affine", py_dequant_affine, METH_VARARGS,
     "dequant_affine(q, A, C, B, mode, scales, zps, out): (q - zp) * s."},
    {"pack_bits", py_pack_bits, METH_VARARGS,
     "pack_bits(src, rows, cols, bits, dst, unpack): dense LSB-first packing per row."},
    {"fake_quant", py_fake_quant, METH_VARARGS,
     "fake_quant(x, A, C, B, mode, scales, zps, qmin, qmax, dy, y, dx, dscale, dzp)."},
    {"cast_float", py_cast_float, METH_VARARGS,
     "cast_float(x, code, out, out_code, saturate): RNE float casts."},
    {NULL, NULL, 0, NULL},
};

int lc_init_quant(PyObject *m) {
    if (LC_ADD_CODE_TABLE(m, "quant_views", QUANT_VIEWS) < 0 ||
        LC_ADD_CODE_TABLE(m, "quant_roundings", QUANT_ROUNDINGS) < 0)
        return -1;
    return lc_add_methods(m, methods);
}
