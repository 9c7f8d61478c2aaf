/* litecomp.h: the conventions every litecomp kernel follows (see docs/conventions.md).
 *
 *  - One dtype mechanism: LC_DTYPES below, expanded into the code enum, the names and the
 *    element sizes.  bfloat16 and float8 arrive as raw bits (uint16 / uint8 views) with a
 *    dtype code, because ml_dtypes types have run-time NumPy type numbers.
 *  - Kernels are plain C on raw pointers and int64_t sizes.  They return an lc_status; the
 *    Python-facing wrapper turns it into an exception after the parallel region ends.
 *  - The GIL is released around every kernel (LC_NOGIL_BEGIN / LC_NOGIL_END).
 *  - Work is partitioned into fixed blocks of LC_BLOCK elements, never by thread count, and
 *    reductions combine per-block partials in block order: bit-identical for any thread count.
 *  - SIMD paths are compiled with target attributes and picked at run time by lc_simd();
 *    the scalar path always exists and defines the result.
 */
#ifndef LITECOMP_H
#define LITECOMP_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef LC_MODULE_MAIN
#define NO_IMPORT_ARRAY
#endif
#define PY_ARRAY_UNIQUE_SYMBOL litecomp_ARRAY_API
#include <numpy/arrayobject.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------------ dtypes */
/* X(NAME, code, storage C type, itemsize).  Codes are part of the Python<->C contract
 * (litecomp/dtypes.py mirrors them); append, never renumber. */
#define LC_DTYPES(X)                      \
    X(F32, 0, float, 4)                   \
    X(F64, 1, double, 8)                  \
    X(F16, 2, uint16_t, 2)                \
    X(BF16, 3, uint16_t, 2)               \
    X(F8E4M3FN, 4, uint8_t, 1)            \
    X(F8E5M2, 5, uint8_t, 1)              \
    X(I8, 6, int8_t, 1)                   \
    X(U8, 7, uint8_t, 1)                  \
    X(I16, 8, int16_t, 2)                 \
    X(I32, 9, int32_t, 4)                 \
    X(I64, 10, int64_t, 8)                \
    X(BOOL, 11, uint8_t, 1)               \
    X(U16, 12, uint16_t, 2)               \
    X(U32, 13, uint32_t, 4)               \
    X(U64, 14, uint64_t, 8)

typedef enum {
#define X(name, code, ctype, size) LC_##name = code,
    LC_DTYPES(X)
#undef X
    LC_NUM_DTYPES
} lc_dtype;

const char *lc_dtype_name(int code);
int lc_dtype_itemsize(int code); /* 0 for an unknown code */
static inline int lc_is_float_code(int code) { return code >= LC_F32 && code <= LC_F8E5M2; }

/* ------------------------------------------------------------------ status */
typedef enum {
    LC_OK = 0,
    LC_ERR_NOMEM,     /* allocation failed                        -> MemoryError    */
    LC_ERR_NAN,       /* NaN where not allowed                    -> NonFiniteError */
    LC_ERR_NONFINITE, /* inf or NaN where not allowed             -> NonFiniteError */
    LC_ERR_RANGE,     /* a value out of the range the kernel takes -> ArgumentError */
    LC_ERR_DTYPE,     /* a dtype code the kernel does not take    -> DTypeError     */
    LC_ERR_FORMAT,    /* malformed input data (files, packed data)-> FormatError    */
} lc_status;

/* Sets the Python exception for a non-OK status; `what` names the argument.  Returns NULL. */
PyObject *lc_raise_status(lc_status st, const char *what);

/* The litecomp.errors classes, fetched once at module init. */
extern PyObject *lc_ArgumentError, *lc_DTypeError, *lc_ShapeError, *lc_NonFiniteError,
    *lc_FormatError;

/* Checks an array handed to C by the Python layer: C-contiguous, aligned, native byte order,
 * writeable when `writeable`, itemsize matching `code`.  Raises and returns -1 otherwise.
 * The Python layer normalises arrays first; this is the cheap second check that keeps a
 * mistake from ever turning into a misread. */
int lc_check_array(PyArrayObject *a, const char *name, int code, int writeable);

/* An argument that must be an ndarray passing lc_check_array: sets *out, or raises and
 * returns -1.  The _optional form also takes None (then *out = NULL). */
int lc_arg_array(PyObject *o, const char *name, int code, int writeable, PyArrayObject **out);
int lc_arg_optional_array(PyObject *o, const char *name, int code, int writeable,
                          PyArrayObject **out);

/* Raises ShapeError unless `a` has exactly n elements (a NULL array passes). */
int lc_check_size(PyArrayObject *a, const char *name, int64_t n);

/* ------------------------------------------------------------------ GIL */
#define LC_NOGIL_BEGIN Py_BEGIN_ALLOW_THREADS
#define LC_NOGIL_END Py_END_ALLOW_THREADS

/* ------------------------------------------------------------------ threads */
/* Settings shared by threads are C11 atomics (relaxed: each is one independent int). */
#ifndef __STDC_NO_ATOMICS__
#include <stdatomic.h>
#define LC_ATOMIC_INT atomic_int
#define LC_ATOMIC_LOAD(v) atomic_load_explicit(&(v), memory_order_relaxed)
#define LC_ATOMIC_STORE(v, x) atomic_store_explicit(&(v), (x), memory_order_relaxed)
#else
#define LC_ATOMIC_INT volatile int
#define LC_ATOMIC_LOAD(v) (v)
#define LC_ATOMIC_STORE(v, x) ((v) = (x))
#endif

/* The kernels' thread count for the calling thread: its own `with litecomp.threads(n):`
 * value, else the process default (litecomp.set_num_threads).  Use as
 *   #pragma omp parallel for num_threads(lc_threads()) schedule(static)
 * over fixed blocks. */
int lc_threads(void);
void lc_set_threads(int n);

/* Threads for a parallel loop over `work` elements (or multiply-adds): small jobs stay on the
 * calling thread.  Waking the team costs microseconds on an idle machine but can cost a
 * scheduler slice (milliseconds) on a busy one.  Results never depend on it (fixed blocks,
 * fixed reduction order). */
#define LC_PARALLEL_MIN ((int64_t)1 << 18)
int lc_threads_for(int64_t work);

#define LC_BLOCK ((int64_t)1 << 16) /* elements per work block; fixed, never per-thread */
static inline int64_t lc_nblocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

#ifdef _OPENMP
#define LC_PRAGMA(x) _Pragma(#x)
#define LC_OMP(x) LC_PRAGMA(omp x)
#else
#define LC_OMP(x)
#endif

/* ------------------------------------------------------------------ SIMD */
typedef enum {
    LC_SIMD_SCALAR = 0,
    LC_SIMD_AVX2 = 1,        /* AVX2 + FMA + F16C                         */
    LC_SIMD_AVX512 = 2,      /* AVX-512 F, BW, DQ, VL                     */
    LC_SIMD_AVX512_VNNI = 3, /* AVX-512 above + VNNI (+ BF16 if present)  */
} lc_simd_level;

int lc_simd(void);          /* the level kernels should use now: min(detected, cap) */
int lc_simd_detected(void); /* what this CPU and OS support                          */
void lc_simd_cap(int level);/* litecomp.set_simd / LITECOMP_SIMD (process-wide)      */
int lc_get_simd_cap(void);
int lc_cpu_has_avx_vnni(void);

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define LC_X86 1
#include <immintrin.h>
#define LC_TARGET_AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt")))
#define LC_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2,popcnt")))
#define LC_TARGET_AVX512_VNNI \
    __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c,bmi,bmi2,popcnt")))
#endif

/* ------------------------------------------------------------------ scalar conversions */
/* These define the result; SIMD conversions must agree with them bit for bit. */
static inline float lc_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t lc_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static inline float lc_bf16_to_f32(uint16_t h) { return lc_bits_f32((uint32_t)h << 16); }

/* Round to nearest even on the upper 16 bits; NaN stays a (quiet) NaN. */
static inline uint16_t lc_f32_to_bf16(float f) {
    uint32_t u = lc_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* float32 -> IEEE binary16, round to nearest even; overflow -> inf; NaN stays NaN. */
static inline uint16_t lc_f32_to_f16(float f) {
    uint32_t u = lc_f32_bits(f), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 rounds to inf */
    if (a < 0x38800000u) {                                     /* below 2^-14: subnormal */
        /* value / 2^-24, rounded to nearest even, is the subnormal code (0..1024). */
        float scaled = lc_bits_f32(a) * 16777216.0f; /* exact: power of two */
        return (uint16_t)(sign | (uint32_t)nearbyintf(scaled));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u); /* RNE on the 13 dropped bits */
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

/* IEEE binary16 -> binary32, exact (subnormals, inf, NaN payload kept). */
static inline float lc_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        u = sign;
    } else { /* subnormal: value = man * 2^-24, exact in float */
        float f = (float)man * 5.9604644775390625e-08f;
        u = sign | lc_f32_bits(f);
    }
    return lc_bits_f32(u);
}

/* nearbyintf (round half to even) without a libm call: adding and subtracting 1.5 * 2^23
 * rounds exactly for |v| < 2^22; larger values take the library path.  (-0.5 gives +0.0
 * where nearbyintf gives -0.0; every caller adds a zero point or converts to an integer,
 * where the sign of zero cannot matter.) */
static inline float lc_rne(float v) {
    return fabsf(v) < 4194304.0f ? (v + 12582912.0f) - 12582912.0f : nearbyintf(v);
}

/* Reads element i of a float array of any float code as float (f64 rounds to nearest). */
float lc_load_f32(const void *p, int code, int64_t i);
/* Reads element i as double (exact for every float code). */
double lc_load_f64(const void *p, int code, int64_t i);

/* Converts n elements starting at element `start` of a float array to float32 (f64 rounds
 * to nearest even; the rest are exact).  Uses SIMD where it helps; same bits either way. */
void lc_to_f32(const void *src, int code, int64_t start, int64_t n, float *dst);

/* ------------------------------------------------------------------ families */
/* One C file per kernel family; each defines `int lc_init_<name>(PyObject *module)` that adds
 * its functions.  csrc/families.h lists them once (X-macro) for module.c. */
#define LC_DECLARE_FAMILY(name) int lc_init_##name(PyObject *m);

/* Adds a NULL-terminated PyMethodDef table to the module. */
int lc_add_methods(PyObject *m, PyMethodDef *defs);

/* ------------------------------------------------------------------ code tables */
/* Integer codes that C and Python share (a loss kind, a norm kind, a distribution) are
 * listed once, in the family's C file, as an X-macro of (C name, Python name); a code is its
 * position in the list, from 0:
 *
 *     #define NORM_KINDS(X) X(NORM_P, "p") X(NORM_L1, "1") ...
 *     enum { NORM_KINDS(LC_CODE_ENUM) NORM_NKINDS };
 *
 * The family's init exports it with LC_ADD_CODE_TABLE(m, "norm_kinds", NORM_KINDS) as
 * _C.norm_kinds, a read-only {Python name: code} mapping, and the Python layer takes its
 * codes from there, so adding a code is one line of C.  tests/test_codes.py checks every
 * table against the Python code that uses it.  (dtypes have their own table, LC_DTYPES,
 * because their codes also carry a C type and a size.) */
#define LC_CODE_ENUM(cname, pyname) cname,
#define LC_CODE_NAME(cname, pyname) pyname,
int lc_add_code_table(PyObject *m, const char *attr, const char *const *names);
#define LC_ADD_CODE_TABLE(m, attr, TABLE) \
    lc_add_code_table((m), (attr), (const char *const[]){TABLE(LC_CODE_NAME) NULL})

#endif /* LITECOMP_H */
