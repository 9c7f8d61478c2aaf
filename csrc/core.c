/* core.c: kernels every capability uses -- float loads of any float dtype, conversion to
 * float32, the stream-copy bandwidth probe, and tensor_stats (the reduction that shows how a
 * SIMD path reproduces the scalar definition bit for bit). */
#include "litecomp.h"

#include <math.h>
#include <stdlib.h>

/* ------------------------------------------------------------------ float8 decoders */
/* float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities; S.1111.111 is NaN. */
static inline float f8e4m3fn_to_f32(uint8_t b) {
    uint32_t sign = (uint32_t)(b & 0x80u) << 24;
    uint32_t exp = (b >> 3) & 0xfu, man = b & 0x7u;
    if (exp == 0xf && man == 0x7) return lc_bits_f32(sign | 0x7fc00000u);
    if (exp == 0) { /* subnormal: man * 2^-9 */
        float f = (float)man * 0.001953125f;
        return lc_bits_f32(sign | lc_f32_bits(f));
    }
    return lc_bits_f32(sign | ((exp + 120u) << 23) | (man << 20));
}
/* float8_e5m2 is the upper byte of an IEEE half. */
static inline float f8e5m2_to_f32(uint8_t b) { return lc_f16_to_f32((uint16_t)((uint16_t)b << 8)); }

float lc_load_f32(const void *p, int code, int64_t i) {
    switch (code) {
    case LC_F32: return ((const float *)p)[i];
    case LC_F64: return (float)((const double *)p)[i];
    case LC_F16: return lc_f16_to_f32(((const uint16_t *)p)[i]);
    case LC_BF16: return lc_bf16_to_f32(((const uint16_t *)p)[i]);
    case LC_F8E4M3FN: return f8e4m3fn_to_f32(((const uint8_t *)p)[i]);
    case LC_F8E5M2: return f8e5m2_to_f32(((const uint8_t *)p)[i]);
    default: return NAN;
    }
}

double lc_load_f64(const void *p, int code, int64_t i) {
    return code == LC_F64 ? ((const double *)p)[i] : (double)lc_load_f32(p, code, i);
}

/* ------------------------------------------------------------------ to float32 */
static void to_f32_scalar(const void *src, int code, int64_t start, int64_t n, float *dst) {
    for (int64_t i = 0; i < n; i++) dst[i] = lc_load_f32(src, code, start + i);
}

#ifdef LC_X86
LC_TARGET_AVX512 static int to_f32_avx512(const void *src, int code, int64_t start, int64_t n,
                                          float *dst) {
    int64_t i = 0;
    switch (code) {
    case LC_F32: memcpy(dst, (const float *)src + start, (size_t)n * 4); return 1;
    case LC_BF16: {
        const uint16_t *s = (const uint16_t *)src + start;
        for (; i + 16 <= n; i += 16) {
            __m256i h = _mm256_loadu_si256((const __m256i *)(s + i));
            __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16);
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(w));
        }
        break;
    }
    case LC_F16: {
        const uint16_t *s = (const uint16_t *)src + start;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + i))));
        break;
    }
    case LC_F64: {
        const double *s = (const double *)src + start;
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, _mm512_cvtpd_ps(_mm512_loadu_pd(s + i)));
        break;
    }
    default: return 0;
    }
    to_f32_scalar(src, code, start + i, n - i, dst + i);
    return 1;
}
#endif

void lc_to_f32(const void *src, int code, int64_t start, int64_t n, float *dst) {
#ifdef LC_X86
    if (lc_simd() >= LC_SIMD_AVX512 && to_f32_avx512(src, code, start, n, dst)) return;
#endif
    to_f32_scalar(src, code, start, n, dst);
}

/* ------------------------------------------------------------------ stream copy */
/* The bandwidth probe: a parallel memcpy over fixed 1 MiB chunks.  Bytes moved = 2 x size
 * (read + write), the STREAM "copy" convention. */
static void stream_copy(char *dst, const char *src, int64_t nbytes) {
    const int64_t chunk = (int64_t)1 << 20;
    int64_t nchunks = lc_nblocks(nbytes, chunk);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t c = 0; c < nchunks; c++) {
        int64_t off = c * chunk, len = nbytes - off < chunk ? nbytes - off : chunk;
        memcpy(dst + off, src + off, (size_t)len);
    }
}

/* ------------------------------------------------------------------ tensor_stats */
/* Definition (the scalar path): non-finite values are counted, not summed.  Within each block
 * of LC_BLOCK elements, element k of the block adds into lane k % 16 (double precision, add
 * then multiply never fused); the 16 lanes are folded by stats_fold_lanes; block results are
 * added in block order.  Any path that keeps this order gives the same bits. */
#define LANES 16

typedef struct {
    double sum, sumsq, min, max, absmax;
    int64_t nonzero, nan, posinf, neginf;
} block_stats;

static double fold_lanes(const double *l) {
    double t[LANES];
    memcpy(t, l, sizeof t);
    for (int w = LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) t[j] = t[j] + t[j + w];
    return t[0];
}

static void block_init(block_stats *b) {
    b->sum = b->sumsq = 0.0;
    b->min = INFINITY; b->max = -INFINITY; b->absmax = 0.0;
    b->nonzero = b->nan = b->posinf = b->neginf = 0;
}

/* One element's contribution, shared by every path for the order-free parts. */
static inline void count_value(block_stats *b, double v) {
    if (v != 0.0) b->nonzero++;
    if (isnan(v)) { b->nan++; return; }
    if (isinf(v)) { if (v > 0) b->posinf++; else b->neginf++; }
    if (v < b->min) b->min = v;
    if (v > b->max) b->max = v;
    if (isfinite(v) && fabs(v) > b->absmax) b->absmax = fabs(v);
}

static void stats_block_scalar(const void *x, int code, int64_t start, int64_t n, block_stats *b) {
    double ls[LANES] = {0}, lq[LANES] = {0};
    block_init(b);
    for (int64_t k = 0; k < n; k++) {
        double v = lc_load_f64(x, code, start + k);
        count_value(b, v);
        double f = isfinite(v) ? v : 0.0;
        ls[k % LANES] = ls[k % LANES] + f;
        lq[k % LANES] = lq[k % LANES] + f * f;
    }
    b->sum = fold_lanes(ls);
    b->sumsq = fold_lanes(lq);
}

#ifdef LC_X86
/* AVX-512: lanes 0-7 live in a0/q0, lanes 8-15 in a1/q1.  Counts and extrema are order-free,
 * so they are taken with the scalar helper on the same values; only the sums need SIMD. */
LC_TARGET_AVX512 static inline void acc16(__m512d v0, __m512d v1, __m512d *a0, __m512d *a1,
                                          __m512d *q0, __m512d *q1) {
    const __m512d inf = _mm512_set1_pd(INFINITY);
    /* |v| < inf  <=>  finite (false for NaN): keep, else zero */
    __mmask8 f0 = _mm512_cmp_pd_mask(_mm512_abs_pd(v0), inf, _CMP_LT_OQ);
    __mmask8 f1 = _mm512_cmp_pd_mask(_mm512_abs_pd(v1), inf, _CMP_LT_OQ);
    v0 = _mm512_maskz_mov_pd(f0, v0);
    v1 = _mm512_maskz_mov_pd(f1, v1);
    *a0 = _mm512_add_pd(*a0, v0);
    *a1 = _mm512_add_pd(*a1, v1);
    *q0 = _mm512_add_pd(*q0, _mm512_mul_pd(v0, v0));
    *q1 = _mm512_add_pd(*q1, _mm512_mul_pd(v1, v1));
}

LC_TARGET_AVX512 static int stats_block_avx512(const void *x, int code, int64_t start, int64_t n,
                                               block_stats *b) {
    if (code != LC_F32 && code != LC_F64 && code != LC_BF16 && code != LC_F16) return 0;
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, q0 = a0, q1 = a0;
    __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY);
    __m512 am = _mm512_setzero_ps();
    float buf[LANES];
    int64_t k = 0;
    block_init(b);
    if (code == LC_F64) {
        const double *p = (const double *)x + start;
        for (; k + LANES <= n; k += LANES) {
            __m512d v0 = _mm512_loadu_pd(p + k), v1 = _mm512_loadu_pd(p + k + 8);
            acc16(v0, v1, &a0, &a1, &q0, &q1);
            for (int j = 0; j < LANES; j++) count_value(b, p[k + j]);
        }
    } else {
        const __m512 zero = _mm512_setzero_ps();
        for (; k + LANES <= n; k += LANES) {
            __m512 v;
            if (code == LC_F32) v = _mm512_loadu_ps((const float *)x + start + k);
            else {
                lc_to_f32(x, code, start + k, LANES, buf);
                v = _mm512_loadu_ps(buf);
            }
            acc16(_mm512_cvtps_pd(_mm512_castps512_ps256(v)),
                  _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))),
                  &a0, &a1, &q0, &q1);
            /* Counts via masks; extrema via min/max that skip NaN (ordered compares). */
            __mmask16 nz = _mm512_cmp_ps_mask(v, zero, _CMP_NEQ_UQ);
            __mmask16 isnan_ = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            __mmask16 pinf = _mm512_cmp_ps_mask(v, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ);
            __mmask16 ninf = _mm512_cmp_ps_mask(v, _mm512_set1_ps(-INFINITY), _CMP_EQ_OQ);
            b->nonzero += __builtin_popcount(nz);
            b->nan += __builtin_popcount(isnan_);
            b->posinf += __builtin_popcount(pinf);
            b->neginf += __builtin_popcount(ninf);
            mn = _mm512_mask_min_ps(mn, (__mmask16)~isnan_, mn, v);
            mx = _mm512_mask_max_ps(mx, (__mmask16)~isnan_, mx, v);
            am = _mm512_mask_max_ps(am, (__mmask16)~(isnan_ | pinf | ninf), am, _mm512_abs_ps(v));
        }
        double vam = _mm512_reduce_max_ps(am);
        if (vam > b->absmax) b->absmax = vam;
        double vmin = _mm512_reduce_min_ps(mn), vmax = _mm512_reduce_max_ps(mx);
        if (vmin < b->min) b->min = vmin;
        if (vmax > b->max) b->max = vmax;
    }
    double ls[LANES], lq[LANES];
    _mm512_storeu_pd(ls, a0); _mm512_storeu_pd(ls + 8, a1);
    _mm512_storeu_pd(lq, q0); _mm512_storeu_pd(lq + 8, q1);
    for (; k < n; k++) { /* tail: the same lane rule as the scalar path */
        double v = lc_load_f64(x, code, start + k);
        count_value(b, v);
        double f = isfinite(v) ? v : 0.0;
        ls[k % LANES] = ls[k % LANES] + f;
        lq[k % LANES] = lq[k % LANES] + f * f;
    }
    b->sum = fold_lanes(ls);
    b->sumsq = fold_lanes(lq);
    return 1;
}

/* AVX2: 16 lanes in four 4-wide double accumulators; f32 and f64 only. */
LC_TARGET_AVX2 static int stats_block_avx2(const void *x, int code, int64_t start, int64_t n,
                                           block_stats *b) {
    if (code != LC_F32 && code != LC_F64) return 0;
    __m256d a[4], q[4];
    const __m256d sign = _mm256_set1_pd(-0.0), inf = _mm256_set1_pd(INFINITY);
    for (int j = 0; j < 4; j++) a[j] = q[j] = _mm256_setzero_pd();
    int64_t k = 0;
    block_init(b);
    for (; k + LANES <= n; k += LANES) {
        for (int j = 0; j < 4; j++) {
            __m256d v = code == LC_F32
                            ? _mm256_cvtps_pd(_mm_loadu_ps((const float *)x + start + k + 4 * j))
                            : _mm256_loadu_pd((const double *)x + start + k + 4 * j);
            __m256d fin = _mm256_cmp_pd(_mm256_andnot_pd(sign, v), inf, _CMP_LT_OQ);
            v = _mm256_and_pd(v, fin);
            a[j] = _mm256_add_pd(a[j], v);
            q[j] = _mm256_add_pd(q[j], _mm256_mul_pd(v, v));
        }
        for (int j = 0; j < LANES; j++) count_value(b, lc_load_f64(x, code, start + k + j));
    }
    double ls[LANES], lq[LANES];
    for (int j = 0; j < 4; j++) { _mm256_storeu_pd(ls + 4 * j, a[j]); _mm256_storeu_pd(lq + 4 * j, q[j]); }
    for (; k < n; k++) {
        double v = lc_load_f64(x, code, start + k);
        count_value(b, v);
        double f = isfinite(v) ? v : 0.0;
        ls[k % LANES] = ls[k % LANES] + f;
        lq[k % LANES] = lq[k % LANES] + f * f;
    }
    b->sum = fold_lanes(ls);
    b->sumsq = fold_lanes(lq);
    return 1;
}
#endif

static void stats_block(const void *x, int code, int64_t start, int64_t n, block_stats *b) {
#ifdef LC_X86
    int level = lc_simd();
    if (level >= LC_SIMD_AVX512 && stats_block_avx512(x, code, start, n, b)) return;
    if (level >= LC_SIMD_AVX2 && stats_block_avx2(x, code, start, n, b)) return;
#endif
    stats_block_scalar(x, code, start, n, b);
}

static lc_status tensor_stats(const void *x, int code, int64_t n, block_stats *out) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    block_stats *parts = malloc((size_t)(nb ? nb : 1) * sizeof *parts);
    if (!parts) return LC_ERR_NOMEM;
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t i = 0; i < nb; i++) {
        int64_t s = i * LC_BLOCK, len = n - s < LC_BLOCK ? n - s : LC_BLOCK;
        stats_block(x, code, s, len, &parts[i]);
    }
    block_init(out);
    for (int64_t i = 0; i < nb; i++) { /* fixed order: block 0, 1, 2, ... */
        block_stats *p = &parts[i];
        out->sum += p->sum;
        out->sumsq += p->sumsq;
        if (p->min < out->min) out->min = p->min;
        if (p->max > out->max) out->max = p->max;
        if (p->absmax > out->absmax) out->absmax = p->absmax;
        out->nonzero += p->nonzero; out->nan += p->nan;
        out->posinf += p->posinf; out->neginf += p->neginf;
    }
    free(parts);
    /* A zero extremum is reported as +0.0 so the sign of zero cannot depend on visit order. */
    if (out->min == 0.0) out->min = 0.0;
    if (out->max == 0.0) out->max = 0.0;
    return LC_OK;
}

/* ------------------------------------------------------------------ Python entry points */
static PyObject *py_tensor_stats(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "code", NULL};
    PyArrayObject *x;
    int code;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!i", kwlist, &PyArray_Type, &x, &code))
        return NULL;
    if (lc_check_array(x, "x", code, 0) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    block_stats s;
    lc_status st;
    int64_t n = PyArray_SIZE(x);
    const void *p = PyArray_DATA(x);
    LC_NOGIL_BEGIN
    st = tensor_stats(p, code, n, &s);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    return Py_BuildValue("{s:L,s:L,s:L,s:L,s:L,s:d,s:d,s:d,s:d,s:d}",
                         "numel", (long long)n, "nonzero", (long long)s.nonzero,
                         "nan", (long long)s.nan, "posinf", (long long)s.posinf,
                         "neginf", (long long)s.neginf, "sum", s.sum, "sumsq", s.sumsq,
                         "min", s.min, "max", s.max, "absmax", s.absmax);
}

static PyObject *py_to_float32(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"src", "code", "out", NULL};
    PyArrayObject *src, *out;
    int code;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iO!", kwlist, &PyArray_Type, &src, &code,
                                     &PyArray_Type, &out))
        return NULL;
    if (lc_check_array(src, "src", code, 0) < 0 || lc_check_array(out, "out", LC_F32, 1) < 0)
        return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "src");
    int64_t n = PyArray_SIZE(src);
    if (PyArray_SIZE(out) != n) {
        PyErr_Format(lc_ShapeError, "out: has %lld elements, src has %lld",
                     (long long)PyArray_SIZE(out), (long long)n);
        return NULL;
    }
    const void *s = PyArray_DATA(src);
    float *d = PyArray_DATA(out);
    LC_NOGIL_BEGIN
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t i = 0; i < nb; i++) {
        int64_t st = i * LC_BLOCK, len = n - st < LC_BLOCK ? n - st : LC_BLOCK;
        lc_to_f32(s, code, st, len, d + st);
    }
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyObject *py_stream_copy(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *dst, *src;
    if (!PyArg_ParseTuple(args, "O!O!", &PyArray_Type, &dst, &PyArray_Type, &src)) return NULL;
    if (lc_check_array(dst, "dst", LC_U8, 1) < 0 || lc_check_array(src, "src", LC_U8, 0) < 0)
        return NULL;
    if (PyArray_NBYTES(dst) != PyArray_NBYTES(src)) {
        PyErr_Format(lc_ShapeError, "dst: %lld bytes, src: %lld bytes; they must match",
                     (long long)PyArray_NBYTES(dst), (long long)PyArray_NBYTES(src));
        return NULL;
    }
    char *d = PyArray_DATA(dst);
    const char *s = PyArray_DATA(src);
    int64_t n = PyArray_NBYTES(src);
    LC_NOGIL_BEGIN
    stream_copy(d, s, n);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"tensor_stats", (PyCFunction)(void (*)(void))py_tensor_stats, METH_VARARGS | METH_KEYWORDS,
     "tensor_stats(x, code) -> dict of counts, extrema and sums (see litecomp.core)."},
    {"to_float32", (PyCFunction)(void (*)(void))py_to_float32, METH_VARARGS | METH_KEYWORDS,
     "to_float32(src, code, out): convert any float dtype to float32."},
    {"stream_copy", py_stream_copy, METH_VARARGS, "stream_copy(dst, src): parallel byte copy."},
    {NULL, NULL, 0, NULL},
};

int lc_init_core(PyObject *m) { return lc_add_methods(m, methods); }
