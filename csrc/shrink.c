/* shrink.c: token id counting for vocabulary shrinking.
 *
 * token_counts(ids, code, counts): counts[id] += 1 for every id of an integer array, in one
 * parallel pass.  Work is split into fixed blocks of LC_BLOCK ids; each thread adds its
 * blocks into a private histogram and the histograms are summed afterwards.  Counts are
 * integers, so the result is the same for any thread count and any block order.  An id
 * outside [0, vocab) stops nothing mid-way: the kernel reports the position of the first
 * one (the lowest index over all blocks) and the caller raises.
 */
#include "litecomp.h"

#include <stdlib.h>

static inline int64_t id_at(const void *p, int code, int64_t i) {
    switch (code) {
    case LC_I8: return ((const int8_t *)p)[i];
    case LC_U8: return ((const uint8_t *)p)[i];
    case LC_I16: return ((const int16_t *)p)[i];
    case LC_U16: return ((const uint16_t *)p)[i];
    case LC_I32: return ((const int32_t *)p)[i];
    case LC_U32: return ((const uint32_t *)p)[i];
    case LC_I64: return ((const int64_t *)p)[i];
    default: { /* LC_U64: anything above INT64_MAX is out of range anyway */
        uint64_t u = ((const uint64_t *)p)[i];
        return u > (uint64_t)INT64_MAX ? -1 : (int64_t)u;
    }
    }
}

/* Returns -1, or the index of the first id outside [0, vocab). */
static int64_t token_counts(const void *ids, int code, int64_t n, int64_t *counts,
                            int64_t vocab) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    int nt = lc_threads_for(n);
    if (nt > nb) nt = (int)(nb > 0 ? nb : 1);
    int64_t first_bad = n;
    if (nt <= 1) {
        for (int64_t i = 0; i < n; i++) {
            int64_t v = id_at(ids, code, i);
            if (v < 0 || v >= vocab) { /* undo: counts change only on success */
                for (int64_t j = 0; j < i; j++) counts[id_at(ids, code, j)]--;
                return i;
            }
            counts[v]++;
        }
        return -1;
    }
    int64_t *priv = calloc((size_t)nt * (size_t)vocab, sizeof(int64_t));
    if (!priv) return -2;
    LC_OMP(parallel num_threads(nt))
    {
#ifdef _OPENMP
        int t = omp_get_thread_num();
#else
        int t = 0;
#endif
        int64_t *h = priv + (int64_t)t * vocab;
        int64_t bad = n;
        LC_OMP(for schedule(static))
        for (int64_t b = 0; b < nb; b++) {
            int64_t s = b * LC_BLOCK, e = n - s < LC_BLOCK ? n : s + LC_BLOCK;
            for (int64_t i = s; i < e; i++) {
                int64_t v = id_at(ids, code, i);
                if (v < 0 || v >= vocab) {
                    if (i < bad) bad = i;
                    break;
                }
                h[v]++;
            }
        }
        LC_OMP(critical)
        if (bad < first_bad) first_bad = bad;
    }
    if (first_bad < n) {
        free(priv);
        return first_bad;
    }
    LC_OMP(parallel for num_threads(nt) schedule(static))
    for (int64_t v = 0; v < vocab; v++) {
        int64_t acc = counts[v];
        for (int t = 0; t < nt; t++) acc += priv[(int64_t)t * vocab + v];
        counts[v] = acc;
    }
    free(priv);
    return -1;
}

/* token_counts(ids, code, counts int64[vocab]) -> -1 or the index of the first bad id.
 * counts is only changed when every id is in range. */
static PyObject *py_token_counts(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *io, *co;
    int code;
    if (!PyArg_ParseTuple(args, "OiO", &io, &code, &co)) return NULL;
    if (code != LC_I8 && code != LC_U8 && code != LC_I16 && code != LC_U16 && code != LC_I32 &&
        code != LC_U32 && code != LC_I64 && code != LC_U64)
        return lc_raise_status(LC_ERR_DTYPE, "ids");
    PyArrayObject *ids, *counts;
    if (lc_arg_array(io, "ids", code, 0, &ids) < 0 ||
        lc_arg_array(co, "counts", LC_I64, 1, &counts) < 0)
        return NULL;
    const void *ip = PyArray_DATA(ids);
    int64_t n = PyArray_SIZE(ids), vocab = PyArray_SIZE(counts);
    int64_t *cp = PyArray_DATA(counts);
    int64_t bad;
    LC_NOGIL_BEGIN
    bad = token_counts(ip, code, n, cp, vocab);
    LC_NOGIL_END
    if (bad == -2) return PyErr_NoMemory();
    return PyLong_FromLongLong((long long)bad);
}

static PyMethodDef methods[] = {
    {"token_counts", py_token_counts, METH_VARARGS,
     "token_counts(ids, code, counts): counts[id] += 1 per id; -1 or the first bad index."},
    {NULL, NULL, 0, NULL},
};

int lc_init_shrink(PyObject *m) { return lc_add_methods(m, methods); }
