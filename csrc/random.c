/* random.c: counter-based random numbers.  Element i of stream s under seed k depends only on
 * (k, s, i), so fills are identical for any thread count and any block split, and a NumPy
 * reference (litecomp/reference/random.py) reproduces them exactly.
 *
 *   key  = mix(seed ^ mix(stream + GOLDEN))
 *   h(i) = mix(key + (i + 1) * GOLDEN)                 (splitmix64's finaliser)
 *   uniform(i) = lo + (hi - lo) * ((h >> 40) * 2^-24)   computed in double, rounded once
 *   normal(i)  = mean + std * sqrt(-2 ln u1) * cos(2 pi u2),
 *                u1 = ((h >> 32) + 1) * 2^-32, u2 = (h & 0xffffffff) * 2^-32
 */
#include "litecomp.h"

#include <math.h>

#define GOLDEN 0x9E3779B97F4A7C15ull

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t stream_key(uint64_t seed, uint64_t stream) {
    return mix64(seed ^ mix64(stream + GOLDEN));
}

static inline uint64_t hash_at(uint64_t key, int64_t i) {
    return mix64(key + ((uint64_t)i + 1u) * GOLDEN);
}

static inline double uniform01(uint64_t h) { return (double)(h >> 40) * 0x1p-24; }

static inline double normal01(uint64_t h) {
    double u1 = ((double)(h >> 32) + 1.0) * 0x1p-32;
    double u2 = (double)(h & 0xffffffffull) * 0x1p-32;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* What fill_random draws, exported as _C.random_dists: uniform(a, b) in [a, b), normal with
 * mean a and standard deviation b, or the raw 64-bit hashes (uint64). */
#define RANDOM_DISTS(X)         \
    X(DIST_UNIFORM, "uniform")  \
    X(DIST_NORMAL, "normal")    \
    X(DIST_BITS, "bits")
enum { RANDOM_DISTS(LC_CODE_ENUM) DIST_NDISTS };

static void fill(void *out, int code, int64_t n, uint64_t seed, uint64_t stream, int dist,
                 double a, double b) {
    uint64_t key = stream_key(seed, stream);
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t blk = 0; blk < nb; blk++) {
        int64_t s = blk * LC_BLOCK, e = n - s < LC_BLOCK ? n : s + LC_BLOCK;
        for (int64_t i = s; i < e; i++) {
            uint64_t h = hash_at(key, i);
            if (dist == DIST_BITS) { ((uint64_t *)out)[i] = h; continue; }
            double v = dist == DIST_UNIFORM ? a + (b - a) * uniform01(h) : a + b * normal01(h);
            if (code == LC_F64) ((double *)out)[i] = v;
            else ((float *)out)[i] = (float)v;
        }
    }
}

static PyObject *py_fill_random(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"out", "code", "seed", "stream", "dist", "a", "b", NULL};
    PyArrayObject *out;
    int code, dist;
    unsigned long long seed, stream;
    double a, b;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iKKidd", kwlist, &PyArray_Type, &out, &code,
                                     &seed, &stream, &dist, &a, &b))
        return NULL;
    if (lc_check_array(out, "out", code, 1) < 0) return NULL;
    if (dist < 0 || dist >= DIST_NDISTS) {
        PyErr_Format(lc_ArgumentError, "dist: unknown distribution code %d", dist);
        return NULL;
    }
    int want = dist == DIST_BITS ? LC_U64 : code;
    if ((dist == DIST_BITS && code != LC_U64) ||
        (dist != DIST_BITS && code != LC_F32 && code != LC_F64))
        return lc_raise_status(LC_ERR_DTYPE, want == LC_U64 ? "out (uint64 needed)" : "out");
    void *p = PyArray_DATA(out);
    int64_t n = PyArray_SIZE(out);
    LC_NOGIL_BEGIN
    fill(p, code, n, (uint64_t)seed, (uint64_t)stream, dist, a, b);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"fill_random", (PyCFunction)(void (*)(void))py_fill_random, METH_VARARGS | METH_KEYWORDS,
     "fill_random(out, code, seed, stream, dist, a, b): counter-based fill (see random.c)."},
    {NULL, NULL, 0, NULL},
};

int lc_init_random(PyObject *m) {
    if (LC_ADD_CODE_TABLE(m, "random_dists", RANDOM_DISTS) < 0) return -1;
    return lc_add_methods(m, methods);
}
