/* codebook.c: codebook (non-uniform) quantization -- bitsandbytes-style NF4/FP4 with
 * blockwise absmax scaling, and the assignment step of 1-D k-means.
 *
 * Nearest code: the codebook is given sorted ascending with the midpoints between
 * neighbours; a value goes to the upper code when it is strictly greater than the midpoint
 * (bitsandbytes' dQuantizeNF4 decision tree: `x > threshold`).  `perm` maps sorted position
 * to the stored code index (identity for NF4; FP4's codes are sign-magnitude).
 * Packing: two codes per byte, the FIRST element in the HIGH nibble (bitsandbytes' order,
 * the opposite of ggml and torch).  An odd final element leaves the low nibble zero.
 */
#include "litecomp.h"
#include "quant.h"

#include <math.h>
#include <stdlib.h>

#define MAXK 256

static inline int nearest(float v, const float *mids, int k) {
    /* binary search for the number of midpoints strictly below v */
    int lo = 0, hi = k - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v > mids[mid]) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Blockwise absmax 4-bit: absmax[b] = max |x| over block b; v = x * (1 / absmax); code =
 * perm[nearest(v)].  An all-zero block has absmax 0 and v = 0. */
static lc_status blockwise4(const void *x, int code, int64_t n, int64_t block, const float *mids,
                            const uint8_t *perm, uint8_t *out, float *absmax) {
    int64_t nb = lc_nblocks(n, block);
    int bad = 0;
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16) reduction(|:bad))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * block, len = n - s < block ? n - s : block;
        float buf[1024];
        float am = 0.0f;
        for (int64_t c0 = 0; c0 < len; c0 += 1024) {
            int64_t m = len - c0 < 1024 ? len - c0 : 1024;
            lc_to_f32(x, code, s + c0, m, buf);
            for (int64_t i = 0; i < m; i++) {
                float a = fabsf(buf[i]);
                bad |= !(a < INFINITY);
                am = a > am ? a : am;
            }
        }
        absmax[b] = am;
        float inv = am > 0.0f ? 1.0f / am : 0.0f;
        for (int64_t c0 = 0; c0 < len; c0 += 1024) {
            int64_t m = len - c0 < 1024 ? len - c0 : 1024;
            lc_to_f32(x, code, s + c0, m, buf);
            for (int64_t i = 0; i < m; i++) {
                int64_t e = s + c0 + i; /* global index: block sizes are even, so pairs stay */
                uint8_t q = perm[nearest(buf[i] * inv, mids, 16)];
                if (e % 2 == 0) out[e / 2] = (uint8_t)(q << 4);
                else out[e / 2] |= q;
            }
        }
    }
    return bad ? LC_ERR_NONFINITE : LC_OK;
}

static void blockwise4_dequant(const uint8_t *q, int64_t n, int64_t block, const float *codes,
                               const float *absmax, float *y) {
    int64_t nb = lc_nblocks(n, block);
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * block, len = n - s < block ? n - s : block;
        float am = absmax[b];
        for (int64_t e = s; e < s + len; e++) {
            uint8_t c = e % 2 == 0 ? (uint8_t)(q[e / 2] >> 4) : (uint8_t)(q[e / 2] & 0x0f);
            y[e] = codes[c] * am;
        }
    }
}

/* k-means assignment over sorted centroids: index of the nearest centroid per value, plus
 * per-task partial sums and counts combined in task order (deterministic updates). */
static lc_status kmeans_assign(const float *x, int64_t n, const float *mids, int k, uint8_t *idx,
                               double *sums, int64_t *counts) {
    int64_t nt = lc_nblocks(n, LC_BLOCK);
    double *ps = calloc((size_t)(nt ? nt : 1) * (size_t)k, sizeof(double));
    int64_t *pc = calloc((size_t)(nt ? nt : 1) * (size_t)k, sizeof(int64_t));
    if (!ps || !pc) { free(ps); free(pc); return LC_ERR_NOMEM; }
    LC_OMP(parallel for num_threads(lc_threads_for(n)) schedule(dynamic, 16))
    for (int64_t t = 0; t < nt; t++) {
        int64_t s = t * LC_BLOCK, e = n - s < LC_BLOCK ? n : s + LC_BLOCK;
        double *S = ps + t * k;
        int64_t *C = pc + t * k;
        for (int64_t i = s; i < e; i++) {
            int j = nearest(x[i], mids, k);
            idx[i] = (uint8_t)j;
            S[j] += x[i];
            C[j]++;
        }
    }
    for (int j = 0; j < k; j++) { sums[j] = 0; counts[j] = 0; }
    for (int64_t t = 0; t < nt; t++)
        for (int j = 0; j < k; j++) { sums[j] += ps[t * k + j]; counts[j] += pc[t * k + j]; }
    free(ps); free(pc);
    return LC_OK;
}

/* ------------------------------------------------------------------ Python entry points */
static int sorted_mids(PyArrayObject *mids, int k) {
    if (lc_check_array(mids, "midpoints", LC_F32, 0) < 0) return -1;
    if (PyArray_SIZE(mids) != k - 1) {
        PyErr_Format(lc_ShapeError, "midpoints: expected %d values", k - 1);
        return -1;
    }
    return 0;
}

static PyObject *py_blockwise4(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *mids, *perm, *out, *absmax;
    int code;
    long long block;
    if (!PyArg_ParseTuple(args, "O!iLO!O!O!O!", &PyArray_Type, &x, &code, &block, &PyArray_Type,
                          &mids, &PyArray_Type, &perm, &PyArray_Type, &out, &PyArray_Type, &absmax))
        return NULL;
    if (lc_check_array(x, "x", code, 0) < 0 || sorted_mids(mids, 16) < 0 ||
        lc_check_array(perm, "perm", LC_U8, 0) < 0 || lc_check_array(out, "out", LC_U8, 1) < 0 ||
        lc_check_array(absmax, "absmax", LC_F32, 1) < 0)
        return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    int64_t n = PyArray_SIZE(x);
    if (block < 2 || block % 2 || PyArray_SIZE(perm) != 16 ||
        PyArray_SIZE(out) != (n + 1) / 2 || PyArray_SIZE(absmax) != lc_nblocks(n, block)) {
        PyErr_SetString(lc_ShapeError, "out: sizes do not fit x and the (even) block size");
        return NULL;
    }
    const void *xp = PyArray_DATA(x);
    const float *mp = PyArray_DATA(mids);
    const uint8_t *pp = PyArray_DATA(perm);
    uint8_t *op = PyArray_DATA(out);
    float *ap = PyArray_DATA(absmax);
    lc_status st;
    LC_NOGIL_BEGIN
    st = blockwise4(xp, code, n, block, mp, pp, op, ap);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_blockwise4_dequant(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *q, *codes, *absmax, *out;
    long long block;
    if (!PyArg_ParseTuple(args, "O!LO!O!O!", &PyArray_Type, &q, &block, &PyArray_Type, &codes,
                          &PyArray_Type, &absmax, &PyArray_Type, &out))
        return NULL;
    if (lc_check_array(q, "data", LC_U8, 0) < 0 || lc_check_array(codes, "codes", LC_F32, 0) < 0 ||
        lc_check_array(absmax, "absmax", LC_F32, 0) < 0 || lc_check_array(out, "out", LC_F32, 1) < 0)
        return NULL;
    int64_t n = PyArray_SIZE(out);
    if (block < 2 || block % 2 || PyArray_SIZE(codes) != 16 || PyArray_SIZE(q) != (n + 1) / 2 ||
        PyArray_SIZE(absmax) != lc_nblocks(n, block)) {
        PyErr_SetString(lc_FormatError, "data: sizes do not fit the shape and block size");
        return NULL;
    }
    const uint8_t *qp = PyArray_DATA(q);
    const float *cp = PyArray_DATA(codes), *ap = PyArray_DATA(absmax);
    float *op = PyArray_DATA(out);
    LC_NOGIL_BEGIN
    blockwise4_dequant(qp, n, block, cp, ap, op);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyObject *py_kmeans_assign(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *mids, *idx, *sums, *counts;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!", &PyArray_Type, &x, &PyArray_Type, &mids,
                          &PyArray_Type, &idx, &PyArray_Type, &sums, &PyArray_Type, &counts))
        return NULL;
    int k = (int)PyArray_SIZE(mids) + 1;
    if (k < 1 || k > MAXK || lc_check_array(x, "x", LC_F32, 0) < 0 || sorted_mids(mids, k) < 0 ||
        lc_check_array(idx, "idx", LC_U8, 1) < 0 || lc_check_array(sums, "sums", LC_F64, 1) < 0 ||
        lc_check_array(counts, "counts", LC_I64, 1) < 0)
        return NULL;
    if (PyArray_SIZE(idx) != PyArray_SIZE(x) || PyArray_SIZE(sums) != k || PyArray_SIZE(counts) != k) {
        PyErr_SetString(lc_ShapeError, "idx: sizes do not fit");
        return NULL;
    }
    const float *xp = PyArray_DATA(x), *mp = PyArray_DATA(mids);
    uint8_t *ip = PyArray_DATA(idx);
    double *sp = PyArray_DATA(sums);
    int64_t *cp = PyArray_DATA(counts), n = PyArray_SIZE(x);
    lc_status st;
    LC_NOGIL_BEGIN
    st = kmeans_assign(xp, n, mp, k, ip, sp, cp);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"blockwise4", py_blockwise4, METH_VARARGS,
     "blockwise4(x, code, block, midpoints, perm, out, absmax): NF4/FP4-style quantize."},
    {"blockwise4_dequant", py_blockwise4_dequant, METH_VARARGS,
     "blockwise4_dequant(data, block, codes, absmax, out)."},
    {"kmeans_assign", py_kmeans_assign, METH_VARARGS,
     "kmeans_assign(x, midpoints, idx, sums, counts): nearest sorted centroid."},
    {NULL, NULL, 0, NULL},
};

int lc_init_codebook(PyObject *m) { return lc_add_methods(m, methods); }
