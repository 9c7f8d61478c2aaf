/* distill.c: distillation losses with their gradients, row-parallel.
 *
 * Each row of [N, V] student logits s and teacher logits t is one independent problem
 * (q = softmax(s/T), p = softmax(t/T)); rows are spread over threads and their losses are
 * written to a per-row buffer that is summed in row order, so every result is the same for
 * any thread count.  A row is read at most twice (three times for JSD, skew KL, skew reverse
 * KL and TVD, whose gradient needs a row constant that only the loss pass gives); a thread
 * finishes a row before the next, so the later passes read it from cache.  Nothing of size
 * [N, V] is allocated: the gradient goes into the caller's buffer, which may be the float32
 * (float64) student logits themselves -- the last pass reads each element before it writes
 * it, and nothing reads the row after -- so distill.fused_linear keeps one buffer per chunk.
 *
 * The row algorithms live once, in distill_rows.h, over a 16-lane vector vocabulary
 * (distill_lanes.h has one per path).  The scalar path runs them with plain C loops over the
 * lanes and defines the result; the AVX-512 and AVX2 paths run the same lane operations with
 * intrinsics.  exp and log are litecomp's own polynomials (Cephes expf/logf, multiply and add
 * only, no FMA) in every path, so the paths agree bit for bit.  float64 input takes a
 * double-precision scalar path (libm exp and log) meant for gradient checks, not speed.
 *
 * The formulas (REFERENCE.md section 11, docs/distill.md): forward KL T^2 KL(p||q), soft
 * cross entropy T^2 H(p, q), reverse KL KL(q||p), generalized JSD(beta), skew KL
 * KL(p || lam p + (1-lam) q), skew reverse KL KL(q || lam q + (1-lam) p), TVD, MSE and
 * cosine; plus alpha * CE(hard labels) on top of any of the distribution losses. */
#include "litecomp.h"

#include <math.h>
#include <stdlib.h>

/* The losses distill_rows computes, exported as _C.distill_kinds (litecomp.distill.KINDS). */
#define DISTILL_KINDS(X)                 \
    X(K_KL, "kl")                        \
    X(K_CE, "soft_cross_entropy")        \
    X(K_RKL, "reverse_kl")               \
    X(K_JSD, "jsd")                      \
    X(K_SKL, "skew_kl")                  \
    X(K_SRKL, "skew_reverse_kl")         \
    X(K_TVD, "tvd")                      \
    X(K_MSE, "mse")                      \
    X(K_COS, "cosine")
enum { DISTILL_KINDS(LC_CODE_ENUM) K_NKINDS };

/* How distill_sparse reads a top-k teacher cache, exported as _C.topk_modes: "renormalize"
 * spreads the cached mass over the k ids, "tail" keeps the missing mass as one bucket. */
#define TOPK_MODES(X)                    \
    X(TOPK_RENORMALIZE, "renormalize")   \
    X(TOPK_TAIL, "tail")
enum { TOPK_MODES(LC_CODE_ENUM) TOPK_NMODES };
enum { NEED_B = 1, NEED_Z = 2, NEED_WA = 4, NEED_WB = 8, NEED_WBB = 16 };
#define CH 2048          /* elements per chunk of the online log-sum-exp (multiple of 16) */
#define COS_EPS 1e-8     /* torch.nn.functional.cosine_similarity's eps */

typedef struct {
    int kind;
    const void *s, *t;       /* [n, v] student / teacher */
    int scode, tcode;
    const int64_t *labels;   /* [n] or NULL */
    int64_t ignore;
    int64_t n, v;
    double inv_t, beta, alpha, tfac, weight;
    void *grad;              /* [n, v] float32 (float64 for float64 input) or NULL */
    double *row_loss;        /* [n] */
    int8_t *row_bad;         /* [n] 0 ok, 1 student, 2 teacher: NaN, +inf or all -inf */
} dparams;

/* Pass-1 results.  With e_a = exp(a - ma) (a = s/T) and likewise for b = t/T and z = s:
 * sa = sum e_a, sb = sum e_b, sz = sum e_z, and the relative weighted sums
 * wb = sum e_b ((b - mb) - (a - ma)), wa = sum e_a ((a - ma) - (b - mb)), wbb = sum e_b (b - mb),
 * from which KL(p||q) = wb/sb - log sb + log sa and KL(q||p) = wa/sa - log sa + log sb. */
typedef struct {
    double ma, mb, mz, sa, sb, sz, wa, wb, wbb;
} rowstats;

/* Fixed trees over 16 lanes: the one horizontal order every path uses. */
static double fold16(const double *l) {
    double t[16];
    memcpy(t, l, sizeof t);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) t[j] = t[j] + t[j + w];
    return t[0];
}
static float hmax16f(const float *l) {
    float t[16];
    memcpy(t, l, sizeof t);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) t[j] = t[j] > t[j + w] ? t[j] : t[j + w];
    return t[0];
}
static double hmax16d(const double *l) {
    double t[16];
    memcpy(t, l, sizeof t);
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) t[j] = t[j] > t[j + w] ? t[j] : t[j + w];
    return t[0];
}

#include "distill_lanes.h"

/* ------------------------------------------------------------------ dispatch */
enum { PATH_SF = 0, PATH_VF = 1, PATH_SD = 2, PATH_VA = 3 };

static int choose_path(int code) {
    if (code == LC_F64) return PATH_SD;
#ifdef LC_X86
    if (lc_simd() >= LC_SIMD_AVX512) return PATH_VF;
    if (lc_simd() >= LC_SIMD_AVX2) return PATH_VA;
#endif
    return PATH_SF;
}

static void zero_row(const dparams *P, int64_t r) {
    if (!P->grad) return;
    size_t sz = P->scode == LC_F64 ? 8 : 4;
    memset((char *)P->grad + (size_t)(r * P->v) * sz, 0, (size_t)P->v * sz);
}

static void dist_row(const dparams *P, int64_t r, int path) {
    int64_t y = P->labels ? P->labels[r] : -1;
    P->row_loss[r] = 0.0;
    P->row_bad[r] = 0;
    if (P->labels && y == P->ignore) { zero_row(P, r); return; }
    int vec = P->kind == K_MSE || P->kind == K_COS;
    switch (path) {
#ifdef LC_X86
    case PATH_VF: if (vec) row_vec_vf(P, r); else row_dist_vf(P, r, y); break;
    case PATH_VA: if (vec) row_vec_va(P, r); else row_dist_va(P, r, y); break;
#endif
    case PATH_SD: if (vec) row_vec_sd(P, r); else row_dist_sd(P, r, y); break;
    default: if (vec) row_vec_sf(P, r); else row_dist_sf(P, r, y); break;
    }
}

/* Runs every row, then sums the row losses in row order.  Returns the first bad row or -1. */
static int64_t run_rows(dparams *P, double *total) {
    int path = choose_path(P->scode);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(dynamic, 1))
    for (int64_t r = 0; r < P->n; r++) dist_row(P, r, path);
    double sum = 0.0;
    for (int64_t r = 0; r < P->n; r++) {
        if (P->row_bad[r]) return r;
        sum += P->row_loss[r];
    }
    *total = sum;
    return -1;
}

/* ------------------------------------------------------------------ sparse teachers */
typedef struct {
    const int64_t *ids;  /* [n, k], -1 = unused slot */
    const float *lps;    /* [n, k] teacher log-probabilities (full-vocabulary softmax) */
    int64_t k;
    int tail;            /* mode TOPK_TAIL: the missing mass is one tail bucket */
} sparse_t;

static void sparse_stats(const dparams *P, int64_t r, int path, rowstats *st) {
    switch (path) {
#ifdef LC_X86
    case PATH_VF: pass1_vf(P, r, 0, st); break;
    case PATH_VA: pass1_va(P, r, 0, st); break;
#endif
    case PATH_SD: pass1_sd(P, r, 0, st); break;
    default: pass1_sf(P, r, 0, st); break;
    }
}

static double sparse_q(const dparams *P, int64_t idx, int path, const rowstats *st) {
    switch (path) {
#ifdef LC_X86
    case PATH_VF: return q1_vf(P, idx, st->ma, st->sa);
    case PATH_VA: return q1_va(P, idx, st->ma, st->sa);
#endif
    case PATH_SD: return q1_sd(P, idx, st->ma, st->sa);
    default: return q1_sf(P, idx, st->ma, st->sa);
    }
}

static void sparse_fill(const dparams *P, int64_t r, int path, const rowstats *st, double coef) {
    switch (path) {
#ifdef LC_X86
    case PATH_VF: write_q_vf(P, r, st->ma, st->sa, coef); break;
    case PATH_VA: write_q_va(P, r, st->ma, st->sa, coef); break;
#endif
    case PATH_SD: write_q_sd(P, r, st->ma, st->sa, coef); break;
    default: write_q_sf(P, r, st->ma, st->sa, coef); break;
    }
}

static void sparse_set(const dparams *P, int64_t idx, double v) {
    if (P->scode == LC_F64) ((double *)P->grad)[idx] = v;
    else ((float *)P->grad)[idx] = (float)v;
}

static void sparse_row(const dparams *P, const sparse_t *S, int64_t r, int path) {
    int64_t y = P->labels ? P->labels[r] : -1;
    P->row_loss[r] = 0.0;
    P->row_bad[r] = 0;
    if (P->labels && y == P->ignore) { zero_row(P, r); return; }
    rowstats st;
    sparse_stats(P, r, path, &st);
    if (!(st.sa > 0 && st.sa < INFINITY) || !(st.ma < INFINITY)) { P->row_bad[r] = 1; return; }
    const double lsa = log(st.sa), T = 1.0 / P->inv_t;
    const int64_t *ids = S->ids + r * S->k;
    const float *lps = S->lps + r * S->k;
    double tot = 0.0, qk = 0.0;
    int64_t kv = 0;
    for (int64_t j = 0; j < S->k; j++)
        if (ids[j] >= 0) { tot += exp((double)lps[j]); kv++; }
    /* A cache that covers the whole vocabulary has no tail, whatever rounding left over. */
    double lz = S->tail ? 0.0 : log(tot);
    double ptail = S->tail && tot < 1.0 && kv < P->v ? 1.0 - tot : 0.0;
    double kl = 0.0;
    for (int64_t j = 0; j < S->k; j++) {
        if (ids[j] < 0) continue;
        double a = (double)lc_load_f64(P->s, P->scode, r * P->v + ids[j]);
        if (P->scode != LC_F64) a = (double)((float)a * (float)P->inv_t); else a *= P->inv_t;
        double lq = (a - st.ma) - lsa, lp = (double)lps[j] - lz, p = exp(lp);
        qk += exp(lq);
        if (p > 0) kl += p * (lp - lq);
    }
    double qtail = qk < 1.0 ? 1.0 - qk : 0.0;
    if (ptail > 0) kl += ptail * (log(ptail) - log(qtail));
    P->row_loss[r] = P->tfac * kl;
    if (!P->grad) return;
    const double cd = P->weight * P->tfac / T;
    /* dL/da_j = q_j (g_j - c), g = -p/q on the ids and -ptail/qtail elsewhere,
     * c = sum q g = -(sum p + ptail) */
    double c = -((S->tail ? tot : 1.0) + ptail);
    double rest = ptail > 0 ? -ptail / qtail - c : -c;
    sparse_fill(P, r, path, &st, cd * rest);
    for (int64_t j = 0; j < S->k; j++) {
        if (ids[j] < 0) continue;
        double p = exp((double)lps[j] - lz), q = sparse_q(P, r * P->v + ids[j], path, &st);
        sparse_set(P, r * P->v + ids[j], cd * (-p - c * q));
    }
}

/* ------------------------------------------------------------------ top-k */
/* "Better" = larger value, ties broken by the smaller id: a total order, so the selection is
 * deterministic.  A min-heap of the k best so far keeps the worst at the root. */
static inline int better(float va, int64_t ia, float vb, int64_t ib) {
    return va > vb || (va == vb && ia < ib);
}

static void heap_down(float *v, int64_t *id, int64_t k, int64_t i) {
    for (;;) {
        int64_t w = i, l = 2 * i + 1, r = l + 1;
        if (l < k && better(v[w], id[w], v[l], id[l])) w = l;
        if (r < k && better(v[w], id[w], v[r], id[r])) w = r;
        if (w == i) return;
        float tv = v[i]; v[i] = v[w]; v[w] = tv;
        int64_t ti = id[i]; id[i] = id[w]; id[w] = ti;
        i = w;
    }
}

static int topk_row(const dparams *P, int64_t r, int64_t k, int path, int64_t *ids_out,
                    float *lp_out) {
    rowstats st;
    sparse_stats(P, r, path, &st);
    if (!(st.sa > 0 && st.sa < INFINITY) || !(st.ma < INFINITY)) return 1;
    float *v = malloc((size_t)k * sizeof *v);
    int64_t *id = malloc((size_t)k * sizeof *id);
    if (!v || !id) { free(v); free(id); return 3; }
    const int64_t base = r * P->v;
    for (int64_t j = 0; j < k; j++) { v[j] = (float)-INFINITY; id[j] = P->v + j; }
    for (int64_t i = k - 1; i >= 0; i--) heap_down(v, id, k, i);
    for (int64_t i = 0; i < P->v; i++) {
        float x = (float)lc_load_f64(P->s, P->scode, base + i);
        if (better(x, i, v[0], id[0])) { v[0] = x; id[0] = i; heap_down(v, id, k, 0); }
    }
    /* pop worst-first into the output from the back: best first */
    const double lsa = log(st.sa);
    for (int64_t j = k - 1; j >= 0; j--) {
        int64_t i = id[0];
        double a = P->scode == LC_F64 ? lc_load_f64(P->s, P->scode, base + i) * P->inv_t
                                      : (double)((float)lc_load_f64(P->s, P->scode, base + i) * (float)P->inv_t);
        ids_out[j] = i;
        lp_out[j] = (float)((a - st.ma) - lsa);
        v[0] = v[j]; id[0] = id[j];
        heap_down(v, id, j, 0);
    }
    free(v);
    free(id);
    return 0;
}

/* ------------------------------------------------------------------ Python entry points */
static PyObject *raise_bad_row(const dparams *P, int64_t r) {
    const char *who = P->row_bad[r] == 2 ? "teacher" : "student";
    PyErr_Format(lc_NonFiniteError,
                 "%s: row %lld has NaN or +inf logits, or only -inf ones", who, (long long)r);
    return NULL;
}

/* Common argument parsing: kind, s, scode, t, tcode, n, v, labels, ignore, temperature,
 * beta, alpha, tfac, weight, grad, row_loss. */
static PyObject *py_distill_rows(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"kind", "s", "scode", "t", "tcode", "labels", "ignore",
                             "temperature", "beta", "alpha", "tfac", "weight", "grad",
                             "row_loss", NULL};
    int kind, scode, tcode;
    PyArrayObject *s, *t, *row_loss;
    PyObject *labels_o, *grad_o;
    long long ignore;
    double temperature, beta, alpha, tfac, weight;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iO!iO!iOLdddddOO!", kwlist, &kind,
                                     &PyArray_Type, &s, &scode, &PyArray_Type, &t, &tcode,
                                     &labels_o, &ignore, &temperature, &beta, &alpha, &tfac,
                                     &weight, &grad_o, &PyArray_Type, &row_loss))
        return NULL;
    if (kind < 0 || kind >= K_NKINDS) return lc_raise_status(LC_ERR_RANGE, "kind");
    if (lc_check_array(s, "student", scode, 0) < 0 || lc_check_array(t, "teacher", tcode, 0) < 0 ||
        lc_check_array(row_loss, "row_loss", LC_F64, 1) < 0)
        return NULL;
    int f64 = scode == LC_F64;
    if ((scode != LC_F32 && scode != LC_F16 && scode != LC_BF16 && !f64) ||
        (f64 != (tcode == LC_F64)) ||
        (tcode != LC_F32 && tcode != LC_F16 && tcode != LC_BF16 && tcode != LC_F64))
        return lc_raise_status(LC_ERR_DTYPE, "student/teacher");
    if (PyArray_NDIM(s) != 2 || PyArray_NDIM(t) != 2 || PyArray_DIM(s, 0) != PyArray_DIM(t, 0) ||
        PyArray_DIM(s, 1) != PyArray_DIM(t, 1)) {
        PyErr_SetString(lc_ShapeError, "student/teacher: expected two [N, V] arrays of one shape");
        return NULL;
    }
    if (!(temperature > 0)) return lc_raise_status(LC_ERR_RANGE, "temperature");
    dparams P = {0};
    P.kind = kind; P.s = PyArray_DATA(s); P.t = PyArray_DATA(t); P.scode = scode; P.tcode = tcode;
    P.n = PyArray_DIM(s, 0); P.v = PyArray_DIM(s, 1); P.ignore = ignore;
    P.inv_t = 1.0 / temperature; P.beta = beta; P.alpha = alpha; P.tfac = tfac; P.weight = weight;
    PyArrayObject *lab, *grad;
    if (lc_arg_optional_array(labels_o, "labels", LC_I64, 0, &lab) < 0 || lc_check_size(lab, "labels", P.n) < 0 ||
        lc_arg_optional_array(grad_o, "grad", f64 ? LC_F64 : LC_F32, 1, &grad) < 0 ||
        lc_check_size(grad, "grad", P.n * P.v) < 0 || lc_check_size(row_loss, "row_loss", P.n) < 0)
        return NULL;
    if (lab) {
        const int64_t *L = PyArray_DATA(lab);
        for (int64_t r = 0; r < P.n; r++)
            if (L[r] != ignore && (L[r] < 0 || L[r] >= P.v)) {
                PyErr_Format(lc_ArgumentError, "labels: row %lld has label %lld, outside [0, %lld)",
                             (long long)r, (long long)L[r], (long long)P.v);
                return NULL;
            }
        P.labels = L;
    }
    P.grad = grad ? PyArray_DATA(grad) : NULL;
    P.row_loss = PyArray_DATA(row_loss);
    P.row_bad = malloc((size_t)(P.n ? P.n : 1));
    if (!P.row_bad) return PyErr_NoMemory();
    double total = 0.0;
    int64_t bad;
    LC_NOGIL_BEGIN
    bad = run_rows(&P, &total);
    LC_NOGIL_END
    PyObject *res = bad >= 0 ? raise_bad_row(&P, bad) : PyFloat_FromDouble(total);
    free(P.row_bad);
    return res;
}

static PyObject *py_distill_sparse(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"s", "scode", "ids", "logprobs", "mode", "labels", "ignore",
                             "temperature", "tfac", "weight", "grad", "row_loss", NULL};
    int scode, mode;
    PyArrayObject *s, *ids, *lps, *row_loss;
    PyObject *labels_o, *grad_o;
    long long ignore;
    double temperature, tfac, weight;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!iO!O!iOLdddOO!", kwlist, &PyArray_Type, &s,
                                     &scode, &PyArray_Type, &ids, &PyArray_Type, &lps, &mode,
                                     &labels_o, &ignore, &temperature, &tfac, &weight, &grad_o,
                                     &PyArray_Type, &row_loss))
        return NULL;
    if (mode < 0 || mode >= TOPK_NMODES) return lc_raise_status(LC_ERR_RANGE, "mode");
    if (lc_check_array(s, "student", scode, 0) < 0 || lc_check_array(ids, "ids", LC_I64, 0) < 0 ||
        lc_check_array(lps, "logprobs", LC_F32, 0) < 0 ||
        lc_check_array(row_loss, "row_loss", LC_F64, 1) < 0)
        return NULL;
    if (scode != LC_F32 && scode != LC_F16 && scode != LC_BF16 && scode != LC_F64)
        return lc_raise_status(LC_ERR_DTYPE, "student");
    if (PyArray_NDIM(s) != 2 || PyArray_NDIM(ids) != 2 || PyArray_NDIM(lps) != 2 ||
        PyArray_DIM(ids, 0) != PyArray_DIM(s, 0) || PyArray_DIM(lps, 0) != PyArray_DIM(s, 0) ||
        PyArray_DIM(ids, 1) != PyArray_DIM(lps, 1)) {
        PyErr_SetString(lc_ShapeError, "ids/logprobs: expected [N, k] arrays for [N, V] student");
        return NULL;
    }
    if (!(temperature > 0)) return lc_raise_status(LC_ERR_RANGE, "temperature");
    dparams P = {0};
    P.kind = K_KL; P.s = PyArray_DATA(s); P.scode = scode; P.t = NULL; P.tcode = scode;
    P.n = PyArray_DIM(s, 0); P.v = PyArray_DIM(s, 1); P.ignore = ignore;
    P.inv_t = 1.0 / temperature; P.tfac = tfac; P.weight = weight;
    sparse_t S = {PyArray_DATA(ids), PyArray_DATA(lps), PyArray_DIM(ids, 1), mode == TOPK_TAIL};
    {
        const int64_t *idv = S.ids;
        for (int64_t i = 0; i < P.n * S.k; i++)
            if (idv[i] >= P.v) {
                PyErr_Format(lc_ArgumentError, "ids: id %lld is outside the vocabulary [0, %lld)",
                             (long long)idv[i], (long long)P.v);
                return NULL;
            }
    }
    PyArrayObject *lab, *grad;
    if (lc_arg_optional_array(labels_o, "labels", LC_I64, 0, &lab) < 0 || lc_check_size(lab, "labels", P.n) < 0 ||
        lc_arg_optional_array(grad_o, "grad", scode == LC_F64 ? LC_F64 : LC_F32, 1, &grad) < 0 ||
        lc_check_size(grad, "grad", P.n * P.v) < 0 || lc_check_size(row_loss, "row_loss", P.n) < 0)
        return NULL;
    P.labels = lab ? PyArray_DATA(lab) : NULL;
    P.grad = grad ? PyArray_DATA(grad) : NULL;
    P.row_loss = PyArray_DATA(row_loss);
    P.row_bad = malloc((size_t)(P.n ? P.n : 1));
    if (!P.row_bad) return PyErr_NoMemory();
    double total = 0.0;
    int64_t bad = -1;
    LC_NOGIL_BEGIN
    int path = choose_path(scode);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(dynamic, 1))
    for (int64_t r = 0; r < P.n; r++) sparse_row(&P, &S, r, path);
    for (int64_t r = 0; r < P.n; r++) {
        if (P.row_bad[r]) { bad = r; break; }
        total += P.row_loss[r];
    }
    LC_NOGIL_END
    PyObject *res = bad >= 0 ? raise_bad_row(&P, bad) : PyFloat_FromDouble(total);
    free(P.row_bad);
    return res;
}

static PyObject *py_distill_topk(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"logits", "code", "temperature", "ids", "logprobs", NULL};
    int code;
    PyArrayObject *x, *ids, *lps;
    double temperature;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!idO!O!", kwlist, &PyArray_Type, &x, &code,
                                     &temperature, &PyArray_Type, &ids, &PyArray_Type, &lps))
        return NULL;
    if (lc_check_array(x, "logits", code, 0) < 0 || lc_check_array(ids, "ids", LC_I64, 1) < 0 ||
        lc_check_array(lps, "logprobs", LC_F32, 1) < 0)
        return NULL;
    if (code != LC_F32 && code != LC_F16 && code != LC_BF16 && code != LC_F64)
        return lc_raise_status(LC_ERR_DTYPE, "logits");
    if (PyArray_NDIM(x) != 2 || PyArray_NDIM(ids) != 2 || PyArray_NDIM(lps) != 2 ||
        PyArray_DIM(ids, 0) != PyArray_DIM(x, 0) || PyArray_DIM(lps, 0) != PyArray_DIM(x, 0) ||
        PyArray_DIM(ids, 1) != PyArray_DIM(lps, 1) || PyArray_DIM(ids, 1) > PyArray_DIM(x, 1)) {
        PyErr_SetString(lc_ShapeError, "ids/logprobs: expected [N, k] arrays, k <= V");
        return NULL;
    }
    if (!(temperature > 0)) return lc_raise_status(LC_ERR_RANGE, "temperature");
    dparams P = {0};
    P.s = PyArray_DATA(x); P.scode = code; P.n = PyArray_DIM(x, 0); P.v = PyArray_DIM(x, 1);
    P.inv_t = 1.0 / temperature;
    int64_t k = PyArray_DIM(ids, 1);
    int64_t *idv = PyArray_DATA(ids);
    float *lpv = PyArray_DATA(lps);
    int8_t *bad = calloc((size_t)(P.n ? P.n : 1), 1);
    if (!bad) return PyErr_NoMemory();
    LC_NOGIL_BEGIN
    int path = choose_path(code);
    if (k > 0) {
        LC_OMP(parallel for num_threads(lc_threads()) schedule(dynamic, 1))
        for (int64_t r = 0; r < P.n; r++) bad[r] = (int8_t)topk_row(&P, r, k, path, idv + r * k, lpv + r * k);
    }
    LC_NOGIL_END
    for (int64_t r = 0; r < P.n; r++) {
        if (bad[r] == 3) { free(bad); return PyErr_NoMemory(); }
        if (bad[r]) {
            free(bad);
            PyErr_Format(lc_NonFiniteError, "logits: row %lld has NaN or +inf logits, or only -inf ones",
                         (long long)r);
            return NULL;
        }
    }
    free(bad);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"distill_rows", (PyCFunction)(void (*)(void))py_distill_rows, METH_VARARGS | METH_KEYWORDS,
     "distill_rows(...) -> sum of row losses; fills row_loss and grad (see litecomp.distill)."},
    {"distill_sparse", (PyCFunction)(void (*)(void))py_distill_sparse, METH_VARARGS | METH_KEYWORDS,
     "distill_sparse(...) -> sum of row losses against a top-k teacher cache."},
    {"distill_topk", (PyCFunction)(void (*)(void))py_distill_topk, METH_VARARGS | METH_KEYWORDS,
     "distill_topk(logits, code, temperature, ids, logprobs): top-k ids and log-probabilities."},
    {NULL, NULL, 0, NULL},
};

int lc_init_distill(PyObject *m) {
    if (LC_ADD_CODE_TABLE(m, "distill_kinds", DISTILL_KINDS) < 0 ||
        LC_ADD_CODE_TABLE(m, "topk_modes", TOPK_MODES) < 0)
        return -1;
    return lc_add_methods(m, methods);
}
