/* runtime.c: what every kernel leans on -- dtype table, status -> exception, the array
 * check, the thread count, and run-time SIMD detection -- plus build_info(). */
#include "litecomp.h"

/* ------------------------------------------------------------------ dtypes */
static const char *const dtype_names[] = {
#define X(name, code, ctype, size) [code] = #name,
    LC_DTYPES(X)
#undef X
};
static const int dtype_sizes[] = {
#define X(name, code, ctype, size) [code] = size,
    LC_DTYPES(X)
#undef X
};
#define X(name, code, ctype, size) _Static_assert(sizeof(ctype) == size, #name " size");
LC_DTYPES(X)
#undef X

const char *lc_dtype_name(int code) {
    return (code >= 0 && code < LC_NUM_DTYPES) ? dtype_names[code] : "unknown";
}
int lc_dtype_itemsize(int code) {
    return (code >= 0 && code < LC_NUM_DTYPES) ? dtype_sizes[code] : 0;
}

/* ------------------------------------------------------------------ errors */
PyObject *lc_raise_status(lc_status st, const char *what) {
    switch (st) {
    case LC_OK: PyErr_SetString(PyExc_SystemError, "litecomp: raise of LC_OK"); break;
    case LC_ERR_NOMEM: PyErr_Format(PyExc_MemoryError, "%s: out of memory", what); break;
    case LC_ERR_NAN: PyErr_Format(lc_NonFiniteError, "%s contains NaN", what); break;
    case LC_ERR_NONFINITE:
        PyErr_Format(lc_NonFiniteError, "%s contains NaN or infinity", what); break;
    case LC_ERR_RANGE: PyErr_Format(lc_ArgumentError, "%s: value out of range", what); break;
    case LC_ERR_DTYPE: PyErr_Format(lc_DTypeError, "%s: unsupported dtype", what); break;
    case LC_ERR_FORMAT: PyErr_Format(lc_FormatError, "%s: malformed data", what); break;
    }
    return NULL;
}

int lc_check_array(PyArrayObject *a, const char *name, int code, int writeable) {
    int size = lc_dtype_itemsize(code);
    if (size == 0) {
        PyErr_Format(lc_DTypeError, "%s: unknown litecomp dtype code %d", name, code);
        return -1;
    }
    if (PyArray_ITEMSIZE(a) != size) {
        PyErr_Format(lc_DTypeError, "%s: itemsize %d does not match dtype %s (%d bytes)", name,
                     (int)PyArray_ITEMSIZE(a), lc_dtype_name(code), size);
        return -1;
    }
    int need = NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | (writeable ? NPY_ARRAY_WRITEABLE : 0);
    if (!PyArray_CHKFLAGS(a, need) || !PyArray_ISNOTSWAPPED(a)) {
        PyErr_Format(lc_ArgumentError,
                     "%s must be a C-contiguous, aligned, native-byte-order%s array "
                     "(the Python layer normally makes it so)", name, writeable ? ", writeable" : "");
        return -1;
    }
    return 0;
}

int lc_arg_array(PyObject *o, const char *name, int code, int writeable, PyArrayObject **out) {
    if (!PyArray_Check(o)) {
        PyErr_Format(lc_ArgumentError, "%s: expected a numpy array", name);
        return -1;
    }
    *out = (PyArrayObject *)o;
    return lc_check_array(*out, name, code, writeable);
}

int lc_arg_optional_array(PyObject *o, const char *name, int code, int writeable,
                          PyArrayObject **out) {
    *out = NULL;
    if (o == Py_None) return 0;
    if (!PyArray_Check(o)) {
        PyErr_Format(lc_ArgumentError, "%s: expected an array or None", name);
        return -1;
    }
    *out = (PyArrayObject *)o;
    return lc_check_array(*out, name, code, writeable);
}

int lc_check_size(PyArrayObject *a, const char *name, int64_t n) {
    if (a && PyArray_SIZE(a) != n) {
        PyErr_Format(lc_ShapeError, "%s: has %lld elements, expected %lld", name,
                     (long long)PyArray_SIZE(a), (long long)n);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ threads */
static int g_threads = 1;

int lc_threads(void) { return g_threads; }
void lc_set_threads(int n) { g_threads = n < 1 ? 1 : n; }

/* ------------------------------------------------------------------ SIMD */
static int g_simd_detected = -1;
static int g_simd_cap = LC_SIMD_AVX512_VNNI;
static int g_avx_vnni = 0;

static void detect_simd(void) {
    int level = LC_SIMD_SCALAR;
#ifdef LC_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        level = LC_SIMD_AVX2;
    if (level == LC_SIMD_AVX2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        level = LC_SIMD_AVX512;
    if (level == LC_SIMD_AVX512 && __builtin_cpu_supports("avx512vnni")) /* gcc's spelling */
        level = LC_SIMD_AVX512_VNNI;
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
    g_avx_vnni = __builtin_cpu_supports("avxvnni");
#endif
#endif
    g_simd_detected = level;
}

int lc_simd_detected(void) {
    if (g_simd_detected < 0) detect_simd();
    return g_simd_detected;
}
int lc_simd(void) {
    int d = lc_simd_detected();
    return d < g_simd_cap ? d : g_simd_cap;
}
void lc_simd_cap(int level) { g_simd_cap = level; }
int lc_cpu_has_avx_vnni(void) { lc_simd_detected(); return g_avx_vnni; }

/* ------------------------------------------------------------------ Python entry points */
static PyObject *py_set_num_threads(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 1 || n > 4096) {
        PyErr_Format(lc_ArgumentError, "n: thread count must be in [1, 4096], got %ld", n);
        return NULL;
    }
    lc_set_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(lc_threads());
}

static PyObject *py_set_simd_cap(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < LC_SIMD_SCALAR || n > LC_SIMD_AVX512_VNNI) {
        PyErr_Format(lc_ArgumentError, "level: SIMD level must be 0..3, got %ld", n);
        return NULL;
    }
    lc_simd_cap((int)n);
    Py_RETURN_NONE;
}

static PyObject *py_simd_level(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(lc_simd());
}

static PyObject *py_build_info(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
#ifdef _OPENMP
    int openmp = 1, omp_version = _OPENMP, procs = omp_get_num_procs();
#else
    int openmp = 0, omp_version = 0, procs = 1;
#endif
#ifdef __VERSION__
    const char *compiler = __VERSION__;
#else
    const char *compiler = "unknown";
#endif
    return Py_BuildValue("{s:O,s:i,s:i,s:i,s:i,s:O,s:s,s:i,s:O}",
                         "openmp", openmp ? Py_True : Py_False,
                         "openmp_version", omp_version,
                         "omp_num_procs", procs,
                         "simd_detected", lc_simd_detected(),
                         "simd", lc_simd(),
                         "avx_vnni", lc_cpu_has_avx_vnni() ? Py_True : Py_False,
                         "compiler", compiler,
                         "num_dtypes", (int)LC_NUM_DTYPES,
#ifdef LC_X86
                         "x86", Py_True
#else
                         "x86", Py_False
#endif
    );
}

static PyObject *py_dtype_table(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    PyObject *d = PyDict_New();
    if (!d) return NULL;
    for (int c = 0; c < LC_NUM_DTYPES; c++) {
        PyObject *v = Py_BuildValue("(si)", lc_dtype_name(c), lc_dtype_itemsize(c));
        PyObject *k = PyLong_FromLong(c);
        int rc = (v && k) ? PyDict_SetItem(d, k, v) : -1;
        Py_XDECREF(v); Py_XDECREF(k);
        if (rc < 0) { Py_DECREF(d); return NULL; }
    }
    return d;
}

static PyMethodDef methods[] = {
    {"set_num_threads", py_set_num_threads, METH_O, "Set the kernels' thread count."},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "The kernels' thread count."},
    {"set_simd_cap", py_set_simd_cap, METH_O, "Cap the SIMD level (0 forces scalar)."},
    {"simd_level", py_simd_level, METH_NOARGS, "The SIMD level kernels use now."},
    {"build_info", py_build_info, METH_NOARGS, "Compile-time and CPU facts."},
    {"dtype_table", py_dtype_table, METH_NOARGS, "{code: (name, itemsize)} as C sees it."},
    {NULL, NULL, 0, NULL},
};

int lc_init_runtime(PyObject *m) {
    lc_simd_detected();
    return lc_add_methods(m, methods);
}
