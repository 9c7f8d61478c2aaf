/* calib.c: the per-column loop of the OBS methods (GPTQ, SparseGPT and their joint mode)
 * for one lazy block of columns.
 *
 * The Python driver (litecomp/calib/obs.py) does the dense linear algebra through NumPy's
 * BLAS/LAPACK -- the inverse-Hessian factor U (upper, U^T U = H^-1) and the trailing update
 * W[:, i2:] -= Err @ U[i1:i2, i2:] after each block.  This kernel does what is left: for
 * every row r and every column i of the block [i1, i1 + count), in column order,
 *
 *     q        = the kept value: 0 if pruned, else w; quantized when a quantizer is on
 *     err[r,i] = (w[r,i] - q) / U[i,i]
 *     w[r, j] -= err[r,i] * U[i, j]          for j = i .. count-1 (inside the block)
 *
 * which is the published algorithm (IST-DASLab gptq.py / sparsegpt.py) column by column.
 * Rows are independent given U, so a row's block segment lives in a small local buffer and
 * the rows are split across threads: no reduction, the same bits for any thread count.  The
 * update loop is plain multiply-then-subtract (the build has -ffp-contract=off), compiled
 * once for the baseline ISA and once with AVX2 / AVX-512 target attributes; elementwise IEEE
 * arithmetic gives the same bits on every path.  obs_row is the definition; with AVX-512
 * the rows go 16 at a time through obs_tile_avx512 (one vector per column, the rows in its
 * lanes), which overlaps the per-column latency chain of 16 rows -- same operations, same
 * bits (tests/test_calib.py compares every path with the reference).
 *
 * Quantizer (qmode 1): codes are clamp(zp + rne(x * (1/s)), 0, qmax) and the kept value is
 * (code - zp) * s, float32 -- litecomp.quant.quantize's rule, so the codes are a QTensor's.
 * With `dynamic`, a group's (scale, zero point) are computed when its first column is
 * reached, from W[r, col : col + group_size] as it stands at the start of the block (the
 * published code reads W, not the block's running copy), with torch.ao's formulas
 * (litecomp.quant.calc_qparams): symmetric s = max(amax / (qmax / 2), eps), zp = 2^(bits-1);
 * affine s = max((max0 - min0) / qmax, eps), zp = clamp(-rne(min0 / s), 0, qmax).
 *
 * Pruning: pmode 1 takes the block's mask (1 = pruned) from the caller; pmode 2 chooses N:M
 * when column i is the first of a group of m: the n lowest (w^2) / (U_jj^2) of the row's next
 * m running values (ties: the lower column first), written into the mask.
 */
#include "litecomp.h"

#include <float.h>
#include <stdlib.h>

typedef struct {
    float *W;            /* rows x cols, the working weight (block columns get the output) */
    const float *U;      /* count x count: U[i1:i2, i1:i2] */
    float *err;          /* rows x count */
    int64_t rows, cols, i1, count;
    /* quantizer */
    int qmode, sym, dynamic;
    int32_t qmax;
    int64_t group_size, ngroups;
    const int64_t *gidx; /* per column: its group (NULL: col / group_size) */
    float *scales;       /* rows x ngroups */
    int32_t *zps;        /* rows x ngroups */
    uint8_t *codes;      /* rows x cols, or NULL */
    /* pruning */
    int pmode;
    uint8_t *pmask;      /* rows x count, 1 = pruned */
    int64_t n, m;
} obs_job;

#define DEF_UPDATE(NAME, ATTR)                                                       \
    ATTR static void NAME(float *restrict w, const float *restrict h, float e,        \
                          int64_t len) {                                             \
        for (int64_t j = 0; j < len; j++) w[j] = w[j] - e * h[j];                    \
    }
DEF_UPDATE(update_scalar, )
#ifdef LC_X86
DEF_UPDATE(update_avx2, LC_TARGET_AVX2)
DEF_UPDATE(update_avx512, LC_TARGET_AVX512)
#endif

typedef void (*update_fn)(float *restrict, const float *restrict, float, int64_t);

static update_fn pick_update(void) {
#ifdef LC_X86
    int level = lc_simd();
    if (level >= LC_SIMD_AVX512) return update_avx512;
    if (level >= LC_SIMD_AVX2) return update_avx2;
#endif
    return update_scalar;
}

/* torch.ao's qparams for one run of a row (see the header comment). */
static void group_params(const float *x, int64_t len, int sym, int32_t qmax, float *s,
                         int32_t *zp) {
    float mn = 0.0f, mx = 0.0f;
    for (int64_t j = 0; j < len; j++) {
        mn = x[j] < mn ? x[j] : mn;
        mx = x[j] > mx ? x[j] : mx;
    }
    if (sym) {
        float amax = -mn > mx ? -mn : mx;
        float sc = amax / (float)((double)qmax / 2.0);
        *s = sc > FLT_EPSILON ? sc : FLT_EPSILON;
        *zp = (qmax + 1) / 2;
    } else {
        float sc = (mx - mn) / (float)qmax;
        sc = sc > FLT_EPSILON ? sc : FLT_EPSILON;
        float z = -lc_rne(mn / sc);
        z = z < 0.0f ? 0.0f : z;
        z = z > (float)qmax ? (float)qmax : z;
        *s = sc;
        *zp = (int32_t)z;
    }
}

static void obs_row(const obs_job *jb, int64_t r, float *w1, update_fn update) {
    const int64_t cnt = jb->count, i1 = jb->i1;
    float *Wr = jb->W + r * jb->cols;
    memcpy(w1, Wr + i1, (size_t)cnt * sizeof(float));
    uint8_t *pm = jb->pmask ? jb->pmask + r * cnt : NULL;
    float *er = jb->err + r * cnt;
    for (int64_t i = 0; i < cnt; i++) {
        const int64_t col = i1 + i;
        const float d = jb->U[i * cnt + i];
        if (jb->pmode == 2 && i % jb->m == 0) {
            float sc[128];
            int64_t mm = jb->m < cnt - i ? jb->m : cnt - i;
            for (int64_t a = 0; a < mm; a++) {
                float dj = jb->U[(i + a) * cnt + (i + a)];
                sc[a] = (w1[i + a] * w1[i + a]) / (dj * dj);
            }
            for (int64_t a = 0; a < mm; a++) {
                int64_t rank = 0;
                for (int64_t b = 0; b < mm; b++)
                    rank += sc[b] < sc[a] || (sc[b] == sc[a] && b < a);
                pm[i + a] = rank < jb->n;
            }
        }
        float q = (jb->pmode && pm[i]) ? 0.0f : w1[i];
        if (jb->qmode) {
            int64_t g = jb->gidx ? jb->gidx[col] : col / jb->group_size;
            float *sp = jb->scales + r * jb->ngroups + g;
            int32_t *zp = jb->zps + r * jb->ngroups + g;
            if (jb->dynamic && col % jb->group_size == 0) {
                int64_t len = jb->group_size < jb->cols - col ? jb->group_size : jb->cols - col;
                group_params(Wr + col, len, jb->sym, jb->qmax, sp, zp);
            }
            const float s = *sp, inv = 1.0f / s;
            const int32_t z = *zp;
            float v = lc_rne(q * inv);
            float lo = (float)(-z), hi = (float)(jb->qmax - z);
            v = v < lo ? lo : v;
            v = v > hi ? hi : v;
            int32_t code = (int32_t)v + z;
            if (jb->codes) jb->codes[r * jb->cols + col] = (uint8_t)code;
            q = (float)(code - z) * s;
        }
        const float e = (w1[i] - q) / d;
        er[i] = e;
        update(w1 + i, jb->U + i * cnt + i, e, cnt - i);
        w1[i] = q;
    }
    memcpy(Wr + i1, w1, (size_t)cnt * sizeof(float));
}

#define OBS_TILE 16
#define OBS_TILE_PARALLEL_MIN ((int64_t)1 << 28) /* multiply-subtracts */

#ifdef LC_X86
/* The same per-column steps for a tile of 16 rows at once, one AVX-512 vector per column
 * (the tile's block segment kept transposed in `wt`, count x 16): the quantize -> divide ->
 * update chain of one column runs for 16 rows together, and every operation is the scalar
 * path's elementwise IEEE operation (multiply then subtract, a true division, RNE rounding,
 * whose sign of zero cannot matter before the integer conversion), so each row gets the
 * bits obs_row gives it.  N:M ranks and the scores are the same comparisons, per lane. */
LC_TARGET_AVX512 static void obs_tile_avx512(const obs_job *jb, int64_t r0, float *wt,
                                             float *et, uint16_t *pk) {
    const int64_t cnt = jb->count, i1 = jb->i1, cols = jb->cols;
    for (int64_t k = 0; k < OBS_TILE; k++) {
        const float *Wr = jb->W + (r0 + k) * cols + i1;
        for (int64_t i = 0; i < cnt; i++) wt[i * OBS_TILE + k] = Wr[i];
    }
    if (jb->pmode == 1)
        for (int64_t i = 0; i < cnt; i++) {
            uint16_t b = 0;
            for (int64_t k = 0; k < OBS_TILE; k++)
                b |= (uint16_t)((jb->pmask[(r0 + k) * cnt + i] != 0) << k);
            pk[i] = b;
        }
    int64_t last_g = -1;
    __m512 sv = _mm512_setzero_ps(), invv = sv;
    __m512i zv = _mm512_setzero_si512();
    const __m512i qmaxv = _mm512_set1_epi32(jb->qmax);
    for (int64_t i = 0; i < cnt; i++) {
        const int64_t col = i1 + i;
        const float *Ui = jb->U + i * cnt;
        if (jb->pmode == 2 && i % jb->m == 0) {
            __m512 sc[128];
            int64_t mm = jb->m < cnt - i ? jb->m : cnt - i;
            for (int64_t a = 0; a < mm; a++) {
                float dj = jb->U[(i + a) * cnt + (i + a)];
                __m512 x = _mm512_load_ps(wt + (i + a) * OBS_TILE);
                sc[a] = _mm512_div_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(dj * dj));
            }
            for (int64_t a = 0; a < mm; a++) {
                __m512i rank = _mm512_setzero_si512();
                const __m512i one = _mm512_set1_epi32(1);
                for (int64_t b = 0; b < mm; b++) {
                    __mmask16 lt = _mm512_cmp_ps_mask(sc[b], sc[a], _CMP_LT_OQ);
                    if (b < a) lt |= _mm512_cmp_ps_mask(sc[b], sc[a], _CMP_EQ_OQ);
                    rank = _mm512_mask_add_epi32(rank, lt, rank, one);
                }
                pk[i + a] = _mm512_cmplt_epi32_mask(rank, _mm512_set1_epi32((int32_t)jb->n));
            }
        }
        __m512 w = _mm512_load_ps(wt + i * OBS_TILE);
        __m512 q = jb->pmode ? _mm512_maskz_mov_ps((__mmask16)~pk[i], w) : w;
        if (jb->qmode) {
            int64_t g = jb->gidx ? jb->gidx[col] : col / jb->group_size;
            if (jb->dynamic && col % jb->group_size == 0) {
                int64_t len = jb->group_size < cols - col ? jb->group_size : cols - col;
                for (int64_t k = 0; k < OBS_TILE; k++)
                    group_params(jb->W + (r0 + k) * cols + col, len, jb->sym, jb->qmax,
                                 jb->scales + (r0 + k) * jb->ngroups + g,
                                 jb->zps + (r0 + k) * jb->ngroups + g);
                last_g = -1;
            }
            if (g != last_g) {
                float sa[OBS_TILE];
                int32_t za[OBS_TILE];
                for (int64_t k = 0; k < OBS_TILE; k++) {
                    sa[k] = jb->scales[(r0 + k) * jb->ngroups + g];
                    za[k] = jb->zps[(r0 + k) * jb->ngroups + g];
                }
                sv = _mm512_loadu_ps(sa);
                invv = _mm512_div_ps(_mm512_set1_ps(1.0f), sv);
                zv = _mm512_loadu_si512(za);
                last_g = g;
            }
            __m512 v = _mm512_roundscale_ps(_mm512_mul_ps(q, invv),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            v = _mm512_max_ps(v, _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_setzero_si512(), zv)));
            v = _mm512_min_ps(v, _mm512_cvtepi32_ps(_mm512_sub_epi32(qmaxv, zv)));
            __m512i code = _mm512_add_epi32(_mm512_cvttps_epi32(v), zv);
            if (jb->codes) {
                int32_t ca[OBS_TILE];
                _mm512_storeu_si512(ca, code);
                for (int64_t k = 0; k < OBS_TILE; k++)
                    jb->codes[(r0 + k) * cols + col] = (uint8_t)ca[k];
            }
            q = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(code, zv)), sv);
        }
        const __m512 e = _mm512_div_ps(_mm512_sub_ps(w, q), _mm512_set1_ps(Ui[i]));
        _mm512_store_ps(et + i * OBS_TILE, e);
        for (int64_t j = i + 1; j < cnt; j++) {
            float *p = wt + j * OBS_TILE;
            _mm512_store_ps(p, _mm512_sub_ps(_mm512_load_ps(p),
                                             _mm512_mul_ps(e, _mm512_set1_ps(Ui[j]))));
        }
        _mm512_store_ps(wt + i * OBS_TILE, q);
    }
    for (int64_t k = 0; k < OBS_TILE; k++) {
        float *Wr = jb->W + (r0 + k) * cols + i1, *er = jb->err + (r0 + k) * cnt;
        for (int64_t i = 0; i < cnt; i++) {
            Wr[i] = wt[i * OBS_TILE + k];
            er[i] = et[i * OBS_TILE + k];
        }
    }
    if (jb->pmode == 2)
        for (int64_t k = 0; k < OBS_TILE; k++)
            for (int64_t i = 0; i < cnt; i++)
                jb->pmask[(r0 + k) * cnt + i] = (uint8_t)((pk[i] >> k) & 1);
}
#endif

static lc_status obs_block(const obs_job *jb) {
    update_fn update = pick_update();
    int tiled = 0;
#ifdef LC_X86
    tiled = lc_simd() >= LC_SIMD_AVX512;
#endif
    /* work units: tiles of OBS_TILE rows on the tiled path (the rows past the last full
     * tile go through obs_row, with the same bits), single rows otherwise */
    const int64_t tile = tiled ? OBS_TILE : 1, ntiles = jb->rows / tile;
    const int64_t units = ntiles + (jb->rows - ntiles * tile);
    int bad = 0;
    /* The tiled path does a 128-column block of 2048 rows in under a millisecond on one
     * core, less than waking the team costs while the BLAS pool of the driver's trailing
     * GEMM still spins on the other cores (measured on 2 cores: 5-8 ms a block, the whole
     * GPTQ of a 256x2048 weight 2.5x slower on two threads than on one).  So it goes
     * parallel only for blocks far larger than that. */
    const int64_t work = jb->rows * jb->count * jb->count / 2;
    const int nt = tiled ? (work >= OBS_TILE_PARALLEL_MIN ? lc_threads_for(work) : 1)
                         : lc_threads_for(work);
    (void)nt; /* unused in a serial build */
    LC_OMP(parallel num_threads(nt) if (nt > 1) reduction(| : bad))
    {
        const size_t c = (size_t)(jb->count > 0 ? jb->count : 1);
        float *w1 = malloc(c * sizeof(float));
        float *wt = tiled ? aligned_alloc(64, 2 * c * 16 * sizeof(float)) : NULL;
        uint16_t *pk = tiled ? malloc(c * sizeof(uint16_t)) : NULL;
        int ok = w1 && (!tiled || (wt && pk));
        if (!ok) bad = 1;
        LC_OMP(for schedule(static))
        for (int64_t u = 0; u < units; u++) {
            if (!ok) continue;
#ifdef LC_X86
            if (u < ntiles && tiled) {
                obs_tile_avx512(jb, u * tile, wt, wt + c * 16, pk);
                continue;
            }
#endif
            obs_row(jb, ntiles * tile + (u - ntiles), w1, update);
        }
        free(w1);
        free(wt);
        free(pk);
    }
    return bad ? LC_ERR_NOMEM : LC_OK;
}

/* obs_block(W, U, err, i1, count, qmode, bits, sym, dynamic, group_size, gidx, scales, zps,
 *           codes, pmode, pmask, n, m) */
static PyObject *py_obs_block(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *W, *U, *err;
    PyObject *gidx_o, *scales_o, *zps_o, *codes_o, *pmask_o;
    long long i1, count, group_size, n, m;
    int qmode, bits, sym, dynamic, pmode;
    if (!PyArg_ParseTuple(args, "O!O!O!LLiiiiLOOOOiOLL", &PyArray_Type, &W, &PyArray_Type, &U,
                          &PyArray_Type, &err, &i1, &count, &qmode, &bits, &sym, &dynamic,
                          &group_size, &gidx_o, &scales_o, &zps_o, &codes_o, &pmode, &pmask_o,
                          &n, &m))
        return NULL;
    if (lc_check_array(W, "W", LC_F32, 1) < 0 || lc_check_array(U, "U", LC_F32, 0) < 0 ||
        lc_check_array(err, "err", LC_F32, 1) < 0)
        return NULL;
    if (PyArray_NDIM(W) != 2) {
        PyErr_SetString(lc_ShapeError, "W: expected a 2-D array");
        return NULL;
    }
    obs_job jb = {0};
    jb.rows = PyArray_DIM(W, 0);
    jb.cols = PyArray_DIM(W, 1);
    jb.i1 = i1;
    jb.count = count;
    if (i1 < 0 || count < 1 || i1 + count > jb.cols) {
        PyErr_SetString(lc_ArgumentError, "i1: the block does not fit the columns");
        return NULL;
    }
    if (lc_check_size(U, "U", count * count) < 0 || lc_check_size(err, "err", jb.rows * count) < 0)
        return NULL;
    jb.W = PyArray_DATA(W);
    jb.U = PyArray_DATA(U);
    jb.err = PyArray_DATA(err);
    jb.qmode = qmode;
    PyArrayObject *gidx = NULL, *scales = NULL, *zps = NULL, *codes = NULL, *pmask = NULL;
    if (qmode) {
        if (bits < 2 || bits > 8 || group_size < 1) {
            PyErr_SetString(lc_ArgumentError, "bits: out of range, or group_size < 1");
            return NULL;
        }
        jb.qmax = (1 << bits) - 1;
        jb.sym = sym;
        jb.dynamic = dynamic;
        jb.group_size = group_size;
        if (lc_arg_optional_array(gidx_o, "gidx", LC_I64, 0, &gidx) < 0 ||
            lc_arg_array(scales_o, "scales", LC_F32, 1, &scales) < 0 ||
            lc_arg_array(zps_o, "zero_points", LC_I32, 1, &zps) < 0 ||
            lc_arg_optional_array(codes_o, "codes", LC_U8, 1, &codes) < 0)
            return NULL;
        if (PyArray_NDIM(scales) != 2 || PyArray_DIM(scales, 0) != jb.rows) {
            PyErr_SetString(lc_ShapeError, "scales: expected (rows, groups)");
            return NULL;
        }
        jb.ngroups = PyArray_DIM(scales, 1);
        if (lc_check_size(zps, "zero_points", jb.rows * jb.ngroups) < 0 ||
            lc_check_size(gidx, "gidx", jb.cols) < 0 ||
            lc_check_size(codes, "codes", jb.rows * jb.cols) < 0)
            return NULL;
        if (gidx) {
            const int64_t *g = PyArray_DATA(gidx);
            for (int64_t j = 0; j < jb.cols; j++)
                if (g[j] < 0 || g[j] >= jb.ngroups) {
                    PyErr_Format(lc_ArgumentError, "gidx: %lld at column %lld is not a group",
                                 (long long)g[j], (long long)j);
                    return NULL;
                }
            jb.gidx = g;
        } else if ((jb.cols + group_size - 1) / group_size > jb.ngroups) {
            PyErr_SetString(lc_ShapeError, "scales: fewer groups than the columns need");
            return NULL;
        }
        if (dynamic && gidx) {
            PyErr_SetString(lc_ArgumentError, "gidx: dynamic groups follow the columns");
            return NULL;
        }
        jb.scales = PyArray_DATA(scales);
        jb.zps = PyArray_DATA(zps);
        jb.codes = codes ? PyArray_DATA(codes) : NULL;
        if (!dynamic) {
            for (int64_t t = 0; t < jb.rows * jb.ngroups; t++)
                if (!(jb.scales[t] > 0.0f) || !(1.0f / jb.scales[t] < INFINITY) ||
                    jb.zps[t] < 0 || jb.zps[t] > jb.qmax) {
                    PyErr_Format(lc_ArgumentError, "scales: entry %lld (%g, zero point %d) "
                                 "is not a valid quantizer", (long long)t,
                                 (double)jb.scales[t], jb.zps[t]);
                    return NULL;
                }
        }
    }
    jb.pmode = pmode;
    if (pmode) {
        if (lc_arg_array(pmask_o, "mask", LC_U8, 1, &pmask) < 0 ||
            lc_check_size(pmask, "mask", jb.rows * count) < 0)
            return NULL;
        jb.pmask = PyArray_DATA(pmask);
        if (pmode == 2) {
            if (m < 1 || m > 128 || n < 0 || n > m || i1 % m || count % m) {
                PyErr_SetString(lc_ArgumentError, "m: N:M groups must tile the block (m <= 128)");
                return NULL;
            }
            jb.n = n;
            jb.m = m;
        }
    }
    lc_status st;
    LC_NOGIL_BEGIN
    st = obs_block(&jb);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "W");
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ symmetric permutation
 * H <- H[q][:, q] in place (act_order's P H P^T): the rows by following the permutation's
 * cycles (one saved row per cycle), then each row's columns through a row buffer.  Copies
 * only, so the result is exact for any thread count; no second n^2 array, where
 * NumPy's take allocates one (at 5632 wide, 127 MB whose first touch cost more than the
 * copies).  q is checked (a permutation of 0..n-1) before anything is written. */
static lc_status permute_symmetric(float *H, int64_t n, const int64_t *q) {
    uint8_t *seen = calloc((size_t)(n > 0 ? n : 1), 1);
    float *row = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (!seen || !row) {
        free(seen);
        free(row);
        return LC_ERR_NOMEM;
    }
    const size_t rb = (size_t)n * sizeof(float);
    for (int64_t s = 0; s < n; s++) {
        if (seen[s]) continue;
        seen[s] = 1;
        if (q[s] == s) continue;
        memcpy(row, H + s * n, rb);
        int64_t i = s;
        for (;;) {
            int64_t j = q[i];
            if (j == s) {
                memcpy(H + i * n, row, rb);
                break;
            }
            memcpy(H + i * n, H + j * n, rb);
            seen[j] = 1;
            i = j;
        }
    }
    free(seen);
    free(row);
    int bad = 0;
    const int nt = lc_threads_for(n * n);
    (void)nt;
    LC_OMP(parallel num_threads(nt) if (nt > 1) reduction(| : bad))
    {
        float *buf = malloc(rb > 0 ? rb : 1);
        if (!buf) bad = 1;
        LC_OMP(for schedule(static))
        for (int64_t r = 0; r < n; r++) {
            if (!buf) continue;
            float *h = H + r * n;
            for (int64_t c = 0; c < n; c++) buf[c] = h[q[c]];
            memcpy(h, buf, rb);
        }
        free(buf);
    }
    return bad ? LC_ERR_NOMEM : LC_OK;
}

/* permute_symmetric(H, q) */
static PyObject *py_permute_symmetric(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *H, *q;
    if (!PyArg_ParseTuple(args, "O!O!", &PyArray_Type, &H, &PyArray_Type, &q)) return NULL;
    if (lc_check_array(H, "H", LC_F32, 1) < 0 || lc_check_array(q, "perm", LC_I64, 0) < 0)
        return NULL;
    if (PyArray_NDIM(H) != 2 || PyArray_DIM(H, 0) != PyArray_DIM(H, 1)) {
        PyErr_SetString(lc_ShapeError, "H: expected a square matrix");
        return NULL;
    }
    const int64_t n = PyArray_DIM(H, 0);
    if (lc_check_size(q, "perm", n) < 0) return NULL;
    const int64_t *qp = PyArray_DATA(q);
    uint8_t *seen = calloc((size_t)(n > 0 ? n : 1), 1);
    if (!seen) return PyErr_NoMemory();
    for (int64_t i = 0; i < n; i++) {
        if (qp[i] < 0 || qp[i] >= n || seen[qp[i]]) {
            free(seen);
            PyErr_Format(lc_ArgumentError, "perm: entry %lld (%lld) makes it no permutation "
                         "of 0..%lld", (long long)i, (long long)qp[i], (long long)(n - 1));
            return NULL;
        }
        seen[qp[i]] = 1;
    }
    free(seen);
    lc_status st;
    LC_NOGIL_BEGIN
    st = permute_symmetric(PyArray_DATA(H), n, qp);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "H");
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"obs_block", py_obs_block, METH_VARARGS,
     "One lazy block of the GPTQ / SparseGPT column loop (see csrc/calib.c)."},
    {"permute_symmetric", py_permute_symmetric, METH_VARARGS,
     "permute_symmetric(H, perm): H <- H[perm][:, perm] in place (float32, square)."},
    {NULL, NULL, 0, NULL},
};

int lc_init_calib(PyObject *m) { return lc_add_methods(m, methods); }
