/* sparse.c: masks as packed bits and the "sparse-bitmask" storage layout.
 *
 * Bits are packed along the last axis of a [rows, cols] array, 8 per byte, little bit order
 * (bit j of byte b is column 8b + j), each row starting on a fresh byte -- exactly
 * numpy.packbits(a, axis=-1, bitorder="little").  Padding bits are zero.
 *
 * sparse-bitmask (compressed-tensors): for W [rows, cols], `bitmask` marks the non-zero
 * entries (for floats: value != 0, so -0.0 counts as zero), `compressed` holds them in
 * row-major order and `row_offsets[r]` is the index in `compressed` of row r's first value
 * (an exclusive prefix sum of per-row counts).  Rows are independent, so every kernel runs
 * rows in parallel and needs no reduction.
 */
#include "litecomp.h"

#include <stdlib.h>

static inline int64_t row_bytes(int64_t cols) { return (cols + 7) / 8; }

/* ------------------------------------------------------------------ pack / unpack / count */
static void pack_bits(const uint8_t *a, uint8_t *out, int64_t rows, int64_t cols) {
    int64_t rb = row_bytes(cols);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *s = a + r * cols;
        uint8_t *d = out + r * rb;
        int64_t full = cols / 8;
        for (int64_t b = 0; b < full; b++) {
            uint64_t v;
            memcpy(&v, s + 8 * b, 8);
            /* bytes are 0/1 (bool): byte j's bit lands at bit 56 + j, no carries */
            v = ((v & 0x0101010101010101ull) * 0x0102040810204080ull) >> 56;
            d[b] = (uint8_t)v;
        }
        if (cols % 8) {
            uint8_t v = 0;
            for (int64_t j = 0; j < cols % 8; j++) v |= (uint8_t)((s[8 * full + j] != 0) << j);
            d[full] = v;
        }
    }
}

static void unpack_bits(const uint8_t *p, uint8_t *out, int64_t rows, int64_t cols) {
    int64_t rb = row_bytes(cols);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *s = p + r * rb;
        uint8_t *d = out + r * cols;
        int64_t full = cols / 8;
        for (int64_t b = 0; b < full; b++) {
            /* byte j keeps bit j of s[b]; adding 0x7f sets a byte's top bit iff it is non-zero */
            uint64_t v = ((uint64_t)s[b] * 0x0101010101010101ull) & 0x8040201008040201ull;
            v = ((v + 0x7f7f7f7f7f7f7f7full) >> 7) & 0x0101010101010101ull;
            memcpy(d + 8 * b, &v, 8);
        }
        for (int64_t j = 8 * full; j < cols; j++) d[j] = (uint8_t)((s[j / 8] >> (j % 8)) & 1u);
    }
}

/* Count of set bits per row; LC_ERR_FORMAT when a padding bit is set. */
static lc_status count_bits(const uint8_t *p, int64_t rows, int64_t cols, int64_t *counts) {
    int64_t rb = row_bytes(cols);
    uint8_t padmask = cols % 8 ? (uint8_t)(0xffu << (cols % 8)) : 0;
    int bad = 0;
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static) reduction(| : bad))
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *s = p + r * rb;
        int64_t c = 0, b = 0;
        for (; b + 8 <= rb; b += 8) {
            uint64_t v;
            memcpy(&v, s + b, 8);
            c += __builtin_popcountll(v);
        }
        for (; b < rb; b++) c += __builtin_popcount(s[b]);
        if (rb && (s[rb - 1] & padmask)) bad = 1;
        counts[r] = c;
    }
    return bad ? LC_ERR_FORMAT : LC_OK;
}

/* ------------------------------------------------------------------ sparse-bitmask */
static inline int is_nonzero(const uint8_t *x, int64_t i, int isz, int is_float) {
    switch (isz) {
    case 1: { uint8_t v = x[i]; return (is_float ? (v & 0x7fu) : v) != 0; }
    case 2: { uint16_t v; memcpy(&v, x + 2 * i, 2); return (is_float ? (v & 0x7fffu) : v) != 0; }
    case 4: { uint32_t v; memcpy(&v, x + 4 * i, 4); return (is_float ? (v & 0x7fffffffu) : v) != 0; }
    default: {
        uint64_t v;
        memcpy(&v, x + 8 * i, 8);
        return (is_float ? (v & 0x7fffffffffffffffull) : v) != 0;
    }
    }
}

#ifdef LC_X86
/* AVX-512 for 4-byte items (float32, int32): 16 entries -> 16 bits per step.  Same bytes as
 * the scalar loop. */
LC_TARGET_AVX512 static int64_t encode_row_avx512_4(const uint8_t *x, int is_float, int64_t cols,
                                                    uint8_t *d) {
    const __m512i absm = _mm512_set1_epi32(is_float ? 0x7fffffff : -1);
    int64_t c = 0, j = 0;
    for (; j + 16 <= cols; j += 16) {
        __m512i v = _mm512_loadu_si512((const void *)(x + 4 * j));
        __mmask16 nz = _mm512_test_epi32_mask(v, absm);
        d[j >> 3] = (uint8_t)nz;
        d[(j >> 3) + 1] = (uint8_t)(nz >> 8);
        c += __builtin_popcount(nz);
    }
    for (; j < cols; j++) {
        int nz = is_nonzero(x, j, 4, is_float);
        d[j >> 3] |= (uint8_t)(nz << (j & 7));
        c += nz;
    }
    return c;
}

/* compress / expand with AVX-512 for 4-byte items. */
LC_TARGET_AVX512 static void gather_row_avx512_4(const uint8_t *s, int64_t cols, const uint8_t *m,
                                                 uint8_t *d) {
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        __mmask16 k = (__mmask16)(m[j >> 3] | ((unsigned)m[(j >> 3) + 1] << 8));
        __m512i v = _mm512_loadu_si512((const void *)(s + 4 * j));
        _mm512_mask_compressstoreu_epi32((void *)d, k, v);
        d += 4 * __builtin_popcount(k);
    }
    for (; j < cols; j++)
        if ((m[j >> 3] >> (j & 7)) & 1u) { memcpy(d, s + 4 * j, 4); d += 4; }
}

LC_TARGET_AVX512 static void scatter_row_avx512_4(const uint8_t *s, int64_t cols, const uint8_t *m,
                                                  uint8_t *d) {
    int64_t j = 0;
    for (; j + 16 <= cols; j += 16) {
        __mmask16 k = (__mmask16)(m[j >> 3] | ((unsigned)m[(j >> 3) + 1] << 8));
        _mm512_storeu_si512((void *)(d + 4 * j), _mm512_maskz_expandloadu_epi32(k, (const void *)s));
        s += 4 * __builtin_popcount(k);
    }
    for (; j < cols; j++) {
        if ((m[j >> 3] >> (j & 7)) & 1u) { memcpy(d + 4 * j, s, 4); s += 4; }
        else memset(d + 4 * j, 0, 4);
    }
}
#endif

/* Writes the bitmask and per-row non-zero counts of x [rows, cols]. */
static void bitmask_encode(const uint8_t *x, int isz, int is_float, int64_t rows, int64_t cols,
                           uint8_t *bitmask, int64_t *counts) {
    int64_t rb = row_bytes(cols);
#ifdef LC_X86
    const int fast = isz == 4 && lc_simd() >= LC_SIMD_AVX512;
#endif
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t r = 0; r < rows; r++) {
        uint8_t *d = bitmask + r * rb;
        const uint8_t *s = x + r * cols * isz;
        memset(d, 0, (size_t)rb);
#ifdef LC_X86
        if (fast) { counts[r] = encode_row_avx512_4(s, is_float, cols, d); continue; }
#endif
        int64_t c = 0;
        for (int64_t j = 0; j < cols; j++) {
            int nz = is_nonzero(s, j, isz, is_float);
            d[j >> 3] |= (uint8_t)(nz << (j & 7));
            c += nz;
        }
        counts[r] = c;
    }
}

/* Copies the entries whose bit is set, row by row, to compressed[row_offsets[r]...]. */
static void bitmask_gather(const uint8_t *x, int isz, int64_t rows, int64_t cols,
                           const uint8_t *bitmask, const int64_t *offsets, uint8_t *compressed) {
    int64_t rb = row_bytes(cols);
#ifdef LC_X86
    const int fast = isz == 4 && lc_simd() >= LC_SIMD_AVX512;
#endif
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *m = bitmask + r * rb;
        uint8_t *d = compressed + offsets[r] * isz;
        const uint8_t *s = x + r * cols * isz;
#ifdef LC_X86
        if (fast) { gather_row_avx512_4(s, cols, m, d); continue; }
#endif
        for (int64_t j = 0; j < cols; j++)
            if ((m[j >> 3] >> (j & 7)) & 1u) { memcpy(d, s + j * isz, (size_t)isz); d += isz; }
    }
}

/* The inverse: out[r, j] = next compressed value where the bit is set, else all-zero bits. */
static void bitmask_scatter(const uint8_t *compressed, int isz, int64_t rows, int64_t cols,
                            const uint8_t *bitmask, const int64_t *offsets, uint8_t *out) {
    int64_t rb = row_bytes(cols);
#ifdef LC_X86
    const int fast = isz == 4 && lc_simd() >= LC_SIMD_AVX512;
#endif
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *m = bitmask + r * rb;
        const uint8_t *s = compressed + offsets[r] * isz;
        uint8_t *d = out + r * cols * isz;
#ifdef LC_X86
        if (fast) { scatter_row_avx512_4(s, cols, m, d); continue; }
#endif
        for (int64_t j = 0; j < cols; j++) {
            if ((m[j >> 3] >> (j & 7)) & 1u) { memcpy(d + j * isz, s, (size_t)isz); s += isz; }
            else memset(d + j * isz, 0, (size_t)isz);
        }
    }
}

/* ------------------------------------------------------------------ Python entry points */
/* A contiguous array of 1/2/4/8-byte items (any dtype), for raw copies. */
static int raw_arr(PyObject *o, const char *name, int writeable, PyArrayObject **a, int *isz) {
    if (!PyArray_Check(o)) {
        PyErr_Format(lc_ArgumentError, "%s: expected a numpy array", name);
        return -1;
    }
    *a = (PyArrayObject *)o;
    *isz = (int)PyArray_ITEMSIZE(*a);
    int need = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writeable ? NPY_ARRAY_WRITEABLE : 0);
    if (!PyArray_CHKFLAGS(*a, need) || (*isz != 1 && *isz != 2 && *isz != 4 && *isz != 8)) {
        PyErr_Format(lc_ArgumentError, "%s: expected a contiguous array of 1, 2, 4 or 8-byte items", name);
        return -1;
    }
    return 0;
}

/* pack_bits(a bool [rows*cols], out uint8 [rows*ceil(cols/8)], rows, cols) */
static PyObject *py_pack_bits(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *ao, *oo;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OOLL", &ao, &oo, &rows, &cols)) return NULL;
    PyArrayObject *a, *o;
    if (lc_arg_array(ao, "mask", LC_BOOL, 0, &a) < 0 || lc_arg_array(oo, "out", LC_U8, 1, &o) < 0 ||
        lc_check_size(a, "mask", rows * cols) < 0 || lc_check_size(o, "out", rows * row_bytes(cols)) < 0)
        return NULL;
    const uint8_t *ap = PyArray_DATA(a);
    uint8_t *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    pack_bits(ap, op, rows, cols);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* unpack_bits(packed uint8, out bool, rows, cols) */
static PyObject *py_unpack_bits(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po, *oo;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OOLL", &po, &oo, &rows, &cols)) return NULL;
    PyArrayObject *p, *o;
    if (lc_arg_array(po, "packed", LC_U8, 0, &p) < 0 || lc_arg_array(oo, "out", LC_BOOL, 1, &o) < 0 ||
        lc_check_size(p, "packed", rows * row_bytes(cols)) < 0 || lc_check_size(o, "out", rows * cols) < 0)
        return NULL;
    const uint8_t *pp = PyArray_DATA(p);
    uint8_t *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    unpack_bits(pp, op, rows, cols);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* count_bits(packed uint8, rows, cols, counts int64 [rows]) */
static PyObject *py_count_bits(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *po, *co;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OLLO", &po, &rows, &cols, &co)) return NULL;
    PyArrayObject *p, *c;
    if (lc_arg_array(po, "packed", LC_U8, 0, &p) < 0 || lc_arg_array(co, "counts", LC_I64, 1, &c) < 0 ||
        lc_check_size(p, "packed", rows * row_bytes(cols)) < 0 || lc_check_size(c, "counts", rows) < 0)
        return NULL;
    const uint8_t *pp = PyArray_DATA(p);
    int64_t *cp = PyArray_DATA(c);
    lc_status st;
    LC_NOGIL_BEGIN
    st = count_bits(pp, rows, cols, cp);
    LC_NOGIL_END
    if (st != LC_OK) {
        PyErr_SetString(lc_FormatError, "bitmask: padding bits beyond the last column are set");
        return NULL;
    }
    Py_RETURN_NONE;
}

/* bitmask_encode(x [rows, cols], is_float, bitmask out, counts out) */
static PyObject *py_bitmask_encode(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *bo, *co;
    int is_float;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OLLpOO", &xo, &rows, &cols, &is_float, &bo, &co)) return NULL;
    PyArrayObject *x, *b, *c;
    int isz;
    if (raw_arr(xo, "x", 0, &x, &isz) < 0 || lc_arg_array(bo, "bitmask", LC_U8, 1, &b) < 0 ||
        lc_arg_array(co, "counts", LC_I64, 1, &c) < 0 || lc_check_size(x, "x", rows * cols) < 0 ||
        lc_check_size(b, "bitmask", rows * row_bytes(cols)) < 0 || lc_check_size(c, "counts", rows) < 0)
        return NULL;
    const uint8_t *xp = PyArray_DATA(x);
    uint8_t *bp = PyArray_DATA(b);
    int64_t *cp = PyArray_DATA(c);
    LC_NOGIL_BEGIN
    bitmask_encode(xp, isz, is_float, rows, cols, bp, cp);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* Checks row_offsets against the bitmask's per-row counts and the compressed length. */
static int check_offsets(const uint8_t *bm, const int64_t *off, int64_t rows, int64_t cols,
                         int64_t total) {
    int64_t *counts = malloc((size_t)(rows ? rows : 1) * sizeof *counts);
    if (!counts) { PyErr_NoMemory(); return -1; }
    lc_status st;
    LC_NOGIL_BEGIN
    st = count_bits(bm, rows, cols, counts);
    LC_NOGIL_END
    if (st != LC_OK) {
        free(counts);
        PyErr_SetString(lc_FormatError, "bitmask: padding bits beyond the last column are set");
        return -1;
    }
    int64_t pos = 0;
    for (int64_t r = 0; r < rows; r++) {
        if (off[r] != pos) {
            free(counts);
            PyErr_Format(lc_FormatError, "row_offsets: entry %lld is %lld, the bitmask says %lld",
                         (long long)r, (long long)off[r], (long long)pos);
            return -1;
        }
        pos += counts[r];
    }
    free(counts);
    if (pos != total) {
        PyErr_Format(lc_FormatError, "compressed: has %lld values, the bitmask marks %lld",
                     (long long)total, (long long)pos);
        return -1;
    }
    return 0;
}

/* What gather and scatter check alike: a dense array of rows x cols items, the compressed
 * values with the same item size, and a bitmask + row_offsets that agree with the values. */
static int bitmask_io(PyObject *dense_o, const char *dense_name, int dense_w, PyObject *vals_o,
                      const char *vals_name, int vals_w, PyObject *bo, PyObject *fo,
                      long long rows, long long cols, PyArrayObject **dense, PyArrayObject **vals,
                      const uint8_t **bp, const int64_t **fp, int *isz) {
    PyArrayObject *b, *f;
    int vsz;
    if (raw_arr(dense_o, dense_name, dense_w, dense, isz) < 0 ||
        raw_arr(vals_o, vals_name, vals_w, vals, &vsz) < 0 ||
        lc_arg_array(bo, "bitmask", LC_U8, 0, &b) < 0 ||
        lc_arg_array(fo, "row_offsets", LC_I64, 0, &f) < 0 ||
        lc_check_size(*dense, dense_name, rows * cols) < 0 ||
        lc_check_size(b, "bitmask", rows * row_bytes(cols)) < 0 ||
        lc_check_size(f, "row_offsets", rows) < 0)
        return -1;
    if (vsz != *isz) {
        PyErr_Format(lc_DTypeError, "%s: item size differs from %s", dense_w ? dense_name : vals_name,
                     dense_w ? vals_name : dense_name);
        return -1;
    }
    *bp = PyArray_DATA(b);
    *fp = PyArray_DATA(f);
    return check_offsets(*bp, *fp, rows, cols, PyArray_SIZE(*vals));
}

/* bitmask_gather(x, rows, cols, bitmask, row_offsets, compressed out) */
static PyObject *py_bitmask_gather(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *bo, *fo, *oo;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OLLOOO", &xo, &rows, &cols, &bo, &fo, &oo)) return NULL;
    PyArrayObject *x, *o;
    const uint8_t *bp;
    const int64_t *fp;
    int isz;
    if (bitmask_io(xo, "x", 0, oo, "compressed", 1, bo, fo, rows, cols, &x, &o, &bp, &fp, &isz) < 0)
        return NULL;
    const uint8_t *xp = PyArray_DATA(x);
    uint8_t *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    bitmask_gather(xp, isz, rows, cols, bp, fp, op);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* bitmask_scatter(compressed, rows, cols, bitmask, row_offsets, out) */
static PyObject *py_bitmask_scatter(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *vo, *bo, *fo, *oo;
    long long rows, cols;
    if (!PyArg_ParseTuple(args, "OLLOOO", &vo, &rows, &cols, &bo, &fo, &oo)) return NULL;
    PyArrayObject *v, *o;
    const uint8_t *bp;
    const int64_t *fp;
    int isz;
    if (bitmask_io(oo, "out", 1, vo, "compressed", 0, bo, fo, rows, cols, &o, &v, &bp, &fp, &isz) < 0)
        return NULL;
    const uint8_t *vp = PyArray_DATA(v);
    uint8_t *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    bitmask_scatter(vp, isz, rows, cols, bp, fp, op);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"mask_pack_bits", py_pack_bits, METH_VARARGS, "mask_pack_bits(mask, out, rows, cols)"},
    {"mask_unpack_bits", py_unpack_bits, METH_VARARGS, "mask_unpack_bits(packed, out, rows, cols)"},
    {"mask_count_bits", py_count_bits, METH_VARARGS, "mask_count_bits(packed, rows, cols, counts)"},
    {"bitmask_encode", py_bitmask_encode, METH_VARARGS,
     "bitmask_encode(x, rows, cols, is_float, bitmask, counts)"},
    {"bitmask_gather", py_bitmask_gather, METH_VARARGS,
     "bitmask_gather(x, rows, cols, bitmask, row_offsets, compressed)"},
    {"bitmask_scatter", py_bitmask_scatter, METH_VARARGS,
     "bitmask_scatter(compressed, rows, cols, bitmask, row_offsets, out)"},
    {NULL, NULL, 0, NULL},
};

int lc_init_sparse(PyObject *m) { return lc_add_methods(m, methods); }
