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
/* Two levels, so that Python threads cannot disturb each other's calls:
 *   g_threads  the process default (set_num_threads, LITECOMP_NUM_THREADS), atomic;
 *   t_threads  the calling OS thread's own value while it is inside `with threads(n):`
 *              (0: none), which no other thread can see or change.
 * A kernel reads lc_threads() on the thread that called it; the value only sizes the team
 * (work is split into fixed blocks), so even a default changed by another thread between
 * two of a kernel's parallel regions cannot change a result -- and kernels that size
 * buffers per thread read it once (prune.c's `nt`). */
static LC_ATOMIC_INT g_threads = 1;
static _Thread_local int t_threads = 0;
static _Thread_local int t_team = 0; /* widest team this thread asked for: team_probe() */

int lc_threads(void) {
    int n = t_threads ? t_threads : LC_ATOMIC_LOAD(g_threads);
    if (n > t_team) t_team = n;
    return n;
}
int lc_threads_for(int64_t work) {
    if (work >= LC_PARALLEL_MIN) return lc_threads();
    if (t_team < 1) t_team = 1;
    return 1;
}
void lc_set_threads(int n) {
    n = n < 1 ? 1 : n;
    LC_ATOMIC_STORE(g_threads, n);
    if (t_threads) t_threads = n; /* inside `threads()`: what you set is what you get */
}

/* ------------------------------------------------------------------ SIMD */
/* The SIMD cap is process-wide only (an atomic): kernels read lc_simd() inside parallel
 * regions, on OpenMP worker threads, which could not see a calling thread's own value.
 * Every path gives the same bits, so a cap another thread changes can change which path
 * runs, never a result. */
static LC_ATOMIC_INT g_simd_detected = -1;
static LC_ATOMIC_INT g_simd_cap = LC_SIMD_AVX512_VNNI;
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
    LC_ATOMIC_STORE(g_simd_detected, level);
}

int lc_simd_detected(void) {
    int d = LC_ATOMIC_LOAD(g_simd_detected);
    if (d < 0) { /* first call is at module init, under the GIL */
        detect_simd();
        d = LC_ATOMIC_LOAD(g_simd_detected);
    }
    return d;
}
int lc_simd(void) {
    int d = lc_simd_detected();
    int cap = LC_ATOMIC_LOAD(g_simd_cap);
    return d < cap ? d : cap;
}
void lc_simd_cap(int level) { LC_ATOMIC_STORE(g_simd_cap, level); }
int lc_get_simd_cap(void) { return LC_ATOMIC_LOAD(g_simd_cap); }
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
    return PyLong_FromLong(t_threads ? t_threads : LC_ATOMIC_LOAD(g_threads));
}

/* The calling thread's own thread count (`with threads(n):`; 0: none). */
static PyObject *py_thread_override(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(t_threads);
}

static PyObject *py_set_thread_override(PyObject *self, PyObject *arg) {
    (void)self;
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred()) return NULL;
    if (n < 0 || n > 4096) {
        PyErr_Format(lc_ArgumentError, "n: thread count must be in [0, 4096], got %ld", n);
        return NULL;
    }
    t_threads = (int)n;
    Py_RETURN_NONE;
}

static PyObject *py_simd_cap(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    return PyLong_FromLong(lc_get_simd_cap());
}

/* The widest team a kernel on this thread asked for since the last call, then reset:
 * lets a test see that an input is big enough for the threads to split the work. */
static PyObject *py_team_probe(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    int t = t_team;
    t_team = 0;
    return PyLong_FromLong(t);
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
#ifndef LC_SANITIZE
#define LC_SANITIZE ""
#endif
    return Py_BuildValue("{s:O,s:i,s:i,s:i,s:i,s:O,s:s,s:i,s:L,s:L,s:s,s:O}",
                         "openmp", openmp ? Py_True : Py_False,
                         "openmp_version", omp_version,
                         "omp_num_procs", procs,
                         "simd_detected", lc_simd_detected(),
                         "simd", lc_simd(),
                         "avx_vnni", lc_cpu_has_avx_vnni() ? Py_True : Py_False,
                         "compiler", compiler,
                         "num_dtypes", (int)LC_NUM_DTYPES,
                         "parallel_min", (long long)LC_PARALLEL_MIN,
                         "block", (long long)LC_BLOCK,
                         "sanitize", LC_SANITIZE,
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
    {"thread_override", py_thread_override, METH_NOARGS,
     "This thread's own thread count (0: none, the process default applies)."},
    {"set_thread_override", py_set_thread_override, METH_O,
     "Set this thread's own thread count (0: none)."},
    {"simd_cap", py_simd_cap, METH_NOARGS, "The process-wide SIMD cap."},
    {"team_probe", py_team_probe, METH_NOARGS,
     "Widest team a kernel on this thread asked for since the last call (then 0)."},
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
