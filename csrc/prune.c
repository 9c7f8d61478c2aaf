/* prune.c: pruning kernels -- exact-k selection of the lowest scores, N:M group masks,
 * channel and block norms, the Wanda activation statistic, and applying/baking masks.
 *
 * Selection (select_lowest) is the heart.  Definition: among the eligible entries (all, or
 * those a previous mask keeps), the k with the lowest score are pruned (mask 0), the rest
 * kept (1); ineligible entries stay 0.  Scores are ordered as real numbers with -0.0 equal
 * to +0.0 (as torch.topk compares them), -inf lowest and +inf highest; NaN is an error.
 * Ties: among equal scores the lower flat index is pruned first (segments of a global
 * selection count as one concatenated vector, in the order given).  So the mask is a pure
 * function of (scores, k, eligible) -- independent of thread count, block split and SIMD.
 *
 * Large inputs first try a sampled bracket (threshold_sampled below: two passes in all).
 * The general algorithm: MSD radix selection on order-preserving integer keys.  Each
 * pass histograms one digit (11 bits by default) of the keys that match the prefix found so
 * far, over fixed blocks; histograms are integer counts, so summing per-thread partials is
 * exact in any order.  The digit holding the k-th lowest key extends the prefix.  A final
 * pass writes the mask (key < T pruned, key > T kept) and counts the entries equal to T per
 * block; a short sequential walk over those counts decides, in flat-index order, which of
 * the ties are pruned.  O(passes * n) time, no sort, no copy of the scores; extra memory is
 * the histograms and one count per block (the sampled bracket adds its candidates: a few
 * percent of the entries, 8 bytes each, capped at n/16).  Blocks are handed out dynamically (a thread
 * that the OS descheduled does not stall the pass); which thread counts a block cannot
 * change an integer sum or a block's own output, so the result does not depend on it.
 */
#include "litecomp.h"

#include <math.h>
#include <stdlib.h>

static inline int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ keys */
/* Order-preserving unsigned keys: flip all bits of negatives, set the sign bit of the rest.
 * -0.0 is first mapped to +0.0 so the two compare equal.  With `absolute` the sign bit is
 * cleared first (the score is |x|).  `bad` collects NaN. */
#define DEF_FLOAT_KEY(NAME, T, SIGN, NANLIM)                                        \
    static inline uint64_t NAME(const void *p, int64_t i, int absolute, int *bad) { \
        T u = ((const T *)p)[i];                                                    \
        if (absolute) u &= (T)~(T)SIGN;                                             \
        *bad |= (T)(u & (T)~(T)SIGN) > (T)NANLIM;                                   \
        if (u == (T)SIGN) u = 0;                                                    \
        return (u & (T)SIGN) ? (T)~u : (T)(u | (T)SIGN);                            \
    }
DEF_FLOAT_KEY(key_f32, uint32_t, 0x80000000u, 0x7f800000u)
DEF_FLOAT_KEY(key_f64, uint64_t, 0x8000000000000000ull, 0x7ff0000000000000ull)
DEF_FLOAT_KEY(key_f16, uint16_t, 0x8000u, 0x7c00u)
DEF_FLOAT_KEY(key_bf16, uint16_t, 0x8000u, 0x7f80u)

/* uint64 scores (random bits) are their own keys. */
static inline uint64_t key_u64(const void *p, int64_t i, int absolute, int *bad) {
    (void)absolute; (void)bad;
    return ((const uint64_t *)p)[i];
}

static int key_bits(int code) {
    switch (code) {
    case LC_F32: return 32;
    case LC_F64: case LC_U64: return 64;
    case LC_F16: case LC_BF16: return 16;
    default: return 0;
    }
}

/* Expands STMT once per key function, with KEY bound to it, dispatching on `code`. */
#define KEY_DISPATCH(code, STMT)                        \
    switch (code) {                                     \
    case LC_F32: { uint64_t (*const KEY)(const void *, int64_t, int, int *) = key_f32; STMT; break; } \
    case LC_F64: { uint64_t (*const KEY)(const void *, int64_t, int, int *) = key_f64; STMT; break; } \
    case LC_F16: { uint64_t (*const KEY)(const void *, int64_t, int, int *) = key_f16; STMT; break; } \
    case LC_BF16: { uint64_t (*const KEY)(const void *, int64_t, int, int *) = key_bf16; STMT; break; } \
    case LC_U64: { uint64_t (*const KEY)(const void *, int64_t, int, int *) = key_u64; STMT; break; } \
    default: break;                                     \
    }

/* ------------------------------------------------------------------ selection */
typedef struct {
    const void *x;        /* scores, dtype `code` */
    const uint8_t *elig;  /* NULL: every entry eligible; else nonzero = eligible */
    uint8_t *out;         /* mask, 1 = keep */
    int64_t n;
} lc_seg;

typedef struct { int64_t seg, start, end; } work_block;

/* Fixed blocks over all segments, in flat order. */
static work_block *make_blocks(const lc_seg *segs, int64_t nseg, int64_t block, int64_t *nb_out) {
    int64_t nb = 0;
    for (int64_t s = 0; s < nseg; s++) nb += lc_nblocks(segs[s].n, block);
    work_block *b = malloc((size_t)(nb ? nb : 1) * sizeof *b);
    if (!b) return NULL;
    int64_t j = 0;
    for (int64_t s = 0; s < nseg; s++)
        for (int64_t st = 0; st < segs[s].n; st += block) {
            b[j].seg = s; b[j].start = st;
            b[j].end = segs[s].n - st < block ? segs[s].n : st + block;
            j++;
        }
    *nb_out = nb;
    return b;
}

/* Histogram of digit (key >> shift) & dmask over eligible keys with key >> hishift == prefix
 * (every key when `first`).  Also counts eligible entries and flags NaN on the first pass. */
static void hist_range(int code, const void *x, const uint8_t *elig, int64_t s, int64_t e,
                       int absolute, int first, int hishift, uint64_t prefix, int shift,
                       uint64_t dmask, int64_t *hist, int64_t *neligible, int *bad) {
    int nan = 0;
    int64_t cnt = 0;
#define HIST_LOOP                                                               \
    for (int64_t i = s; i < e; i++) {                                           \
        if (elig && !elig[i]) continue;                                         \
        uint64_t k = KEY(x, i, absolute, &nan);                                 \
        cnt++;                                                                  \
        if (first || (k >> hishift) == prefix) hist[(k >> shift) & dmask]++;    \
    }
    KEY_DISPATCH(code, HIST_LOOP)
#undef HIST_LOOP
    *neligible += cnt;
    *bad |= nan;
}

/* The final pass over one block: prune key>>tshift < T, keep > T; entries equal to T are
 * pruned when `prune_ties`, else kept and counted (the caller then prunes the first ones). */
static int64_t write_range(int code, const void *x, const uint8_t *elig, uint8_t *out, int64_t s,
                           int64_t e, int absolute, int tshift, uint64_t T, int prune_ties) {
    int nan = 0;
    int64_t ties = 0;
#define WRITE_LOOP                                                              \
    for (int64_t i = s; i < e; i++) {                                           \
        uint64_t h = KEY(x, i, absolute, &nan) >> tshift;                       \
        int eq = h == T;                                                        \
        uint8_t keep = (uint8_t)((h > T) | (eq & !prune_ties));                 \
        if (elig) { keep &= elig[i] != 0; eq &= elig[i] != 0; }                 \
        out[i] = keep;                                                          \
        ties += eq;                                                             \
    }
    KEY_DISPATCH(code, WRITE_LOOP)
#undef WRITE_LOOP
    return prune_ties ? 0 : ties;
}

/* Prunes the first `quota` eligible entries equal to T in [s, e). */
static void prune_first_ties(int code, const void *x, const uint8_t *elig, uint8_t *out,
                             int64_t s, int64_t e, int absolute, int tshift, uint64_t T,
                             int64_t quota) {
    int nan = 0;
#define TIE_LOOP                                                                \
    for (int64_t i = s; i < e && quota > 0; i++) {                              \
        if (elig && !elig[i]) continue;                                         \
        if ((KEY(x, i, absolute, &nan) >> tshift) == T) { out[i] = 0; quota--; } \
    }
    KEY_DISPATCH(code, TIE_LOOP)
#undef TIE_LOOP
}

#ifdef LC_X86
/* AVX-512 mask pass for float32 (the common case): same keys, same bytes as write_range. */
LC_TARGET_AVX512 static int64_t write_range_f32_avx512(const float *x, const uint8_t *elig,
                                                       uint8_t *out, int64_t s, int64_t e,
                                                       int absolute, int tshift, uint32_t T,
                                                       int prune_ties) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const __m512i vT = _mm512_set1_epi32((int)T);
    const __m128i one = _mm_set1_epi8(1);
    const __m128i zero8 = _mm_setzero_si128();
    int64_t ties = 0, i = s;
    for (; i + 16 <= e; i += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(x + i));
        if (absolute) u = _mm512_and_si512(u, absm);
        /* -0.0 -> +0.0 */
        u = _mm512_mask_mov_epi32(u, _mm512_cmpeq_epi32_mask(u, sign), _mm512_setzero_si512());
        __mmask16 neg = _mm512_test_epi32_mask(u, sign);
        __m512i k = _mm512_mask_xor_epi32(_mm512_or_si512(u, sign), neg, u,
                                          _mm512_set1_epi32(-1));
        __m512i h = _mm512_srlv_epi32(k, _mm512_set1_epi32(tshift));
        __mmask16 gt = _mm512_cmpgt_epu32_mask(h, vT);
        __mmask16 eq = _mm512_cmpeq_epi32_mask(h, vT);
        __mmask16 keep = prune_ties ? gt : (__mmask16)(gt | eq);
        if (elig) {
            __mmask16 el = _mm_cmpneq_epi8_mask(_mm_loadu_si128((const __m128i *)(elig + i)), zero8);
            keep &= el;
            eq &= el;
        }
        _mm_storeu_si128((__m128i *)(out + i), _mm_maskz_mov_epi8(keep, one));
        ties += __builtin_popcount(eq);
    }
    int64_t rest = write_range(LC_F32, x, elig, out, i, e, absolute, tshift, T, prune_ties);
    return prune_ties ? 0 : ties + rest;
}

/* AVX-512 histogram pass after the first for float32: most keys fail the prefix test, so
 * test 16 at once and count only the matches. */
LC_TARGET_AVX512 static void hist_range_f32_avx512(const float *x, const uint8_t *elig, int64_t s,
                                                   int64_t e, int absolute, int hishift,
                                                   uint32_t prefix, int shift, uint64_t dmask,
                                                   int64_t *hist, int64_t *neligible) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const __m512i vp = _mm512_set1_epi32((int)prefix);
    const __m128i zero8 = _mm_setzero_si128();
    int64_t cnt = 0, i = s;
    uint32_t lanes[16];
    for (; i + 16 <= e; i += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(x + i));
        if (absolute) u = _mm512_and_si512(u, absm);
        u = _mm512_mask_mov_epi32(u, _mm512_cmpeq_epi32_mask(u, sign), _mm512_setzero_si512());
        __mmask16 neg = _mm512_test_epi32_mask(u, sign);
        __m512i k = _mm512_mask_xor_epi32(_mm512_or_si512(u, sign), neg, u,
                                          _mm512_set1_epi32(-1));
        __mmask16 el = 0xffff;
        if (elig) el = _mm_cmpneq_epi8_mask(_mm_loadu_si128((const __m128i *)(elig + i)), zero8);
        cnt += __builtin_popcount(el);
        __mmask16 m = el & _mm512_cmpeq_epi32_mask(
                               _mm512_srlv_epi32(k, _mm512_set1_epi32(hishift)), vp);
        if (m) {
            _mm512_storeu_si512((void *)lanes, k);
            while (m) {
                int j = __builtin_ctz(m);
                m &= (__mmask16)(m - 1);
                hist[(lanes[j] >> shift) & dmask]++;
            }
        }
    }
    int bad = 0;
    hist_range(LC_F32, x, elig, i, e, absolute, 0, hishift, prefix, shift, dmask, hist,
               &cnt, &bad);
    *neligible += cnt;
}
#endif

/* Where the k-th lowest key lies: entries with key >> tshift below T are pruned, above kept,
 * and the first `krem` (in flat order) of those equal to T are pruned -- all of them when
 * prune_ties.  `mode` short-cuts k = 0 (keep every eligible entry) and k = all (prune all). */
typedef struct {
    int mode; /* THRESH_* */
    int tshift, prune_ties;
    uint64_t T;
    int64_t krem;
} threshold;
enum { THRESH_SPLIT = 0, THRESH_KEEP_ALL = 1, THRESH_PRUNE_ALL = 2 };

/* Runs one histogram pass over every block (digit at `shift` of width w, keys matching
 * `prefix` above it unless `first`) into hists[0..nbins), summing the threads' copies. */
static void hist_pass(const lc_seg *segs, const work_block *blocks, int64_t nb, int code,
                      int absolute, int first, int hishift, uint64_t prefix, int shift,
                      uint64_t dmask, int64_t *hists, int64_t nbins, int nt, int64_t *count,
                      int *nan) {
#ifdef LC_X86
    const int fast = code == LC_F32 && lc_simd() >= LC_SIMD_AVX512;
#endif
    int bad = 0;
    int64_t cnt = 0;
    memset(hists, 0, (size_t)nt * (size_t)nbins * sizeof *hists);
    LC_OMP(parallel num_threads(nt) if (nt > 1) reduction(| : bad) reduction(+ : cnt))
    {
        int64_t *h = hists + (int64_t)thread_id() * nbins;
        LC_OMP(for schedule(dynamic, 2))
        for (int64_t b = 0; b < nb; b++) {
            const lc_seg *sg = &segs[blocks[b].seg];
#ifdef LC_X86
            if (fast && !first) {
                hist_range_f32_avx512(sg->x, sg->elig, blocks[b].start, blocks[b].end,
                                      absolute, hishift, (uint32_t)prefix, shift, dmask, h, &cnt);
                continue;
            }
#endif
            hist_range(code, sg->x, sg->elig, blocks[b].start, blocks[b].end, absolute, first,
                       hishift, prefix, shift, dmask, h, &cnt, &bad);
        }
    }
    for (int t = 1; t < nt; t++)
        for (int64_t j = 0; j < nbins; j++) hists[j] += hists[(int64_t)t * nbins + j];
    *count = cnt;
    *nan = bad;
}

/* The radix passes: narrows the threshold digit by digit (see the top of the file). */
static lc_status threshold_radix(const lc_seg *segs, const work_block *blocks, int64_t nb,
                                 int code, int absolute, int64_t k, int width, int nt,
                                 int kb, threshold *th) {
    if (kb <= 0) kb = key_bits(code); /* else: the keys are known to fit in kb bits */
    const int64_t nbins = (int64_t)1 << width;
    int64_t *hists = malloc((size_t)nt * (size_t)nbins * sizeof *hists);
    if (!hists) return LC_ERR_NOMEM;
    lc_status st = LC_OK;
    uint64_t prefix = 0;
    int done_bits = 0;
    int64_t krem = k;
    th->mode = THRESH_SPLIT;
    while (done_bits < kb) {
        int w = kb - done_bits < width ? kb - done_bits : width;
        int shift = kb - done_bits - w, first = done_bits == 0, bad;
        int64_t cnt;
        hist_pass(segs, blocks, nb, code, absolute, first, kb - done_bits, prefix, shift,
                  ((uint64_t)1 << w) - 1, hists, nbins, nt, &cnt, &bad);
        if (first) {
            if (bad) { st = LC_ERR_NAN; break; }
            if (k > cnt || k < 0) { st = LC_ERR_RANGE; break; }
            if (k == 0) { th->mode = THRESH_KEEP_ALL; break; }
            if (k == cnt) { th->mode = THRESH_PRUNE_ALL; break; }
        }
        int64_t below = 0, d = 0;
        while (below + hists[d] < krem) below += hists[d++];
        krem -= below;
        prefix = (prefix << w) | (uint64_t)d;
        done_bits += w;
        th->tshift = shift;
        th->T = prefix;
        th->krem = krem;
        th->prune_ties = krem == hists[d];
        if (th->prune_ties) break; /* the whole bin goes */
    }
    free(hists);
    return st;
}

/* ------------------------------------------------------------------ sampled threshold */
/* For large inputs a sample brackets the k-th key first: one pass then counts the keys
 * below the bracket and collects the few inside it, and the threshold is found among those
 * in memory -- two passes over the data in all (this one and the mask) instead of four.
 * The sample only decides speed: when it misses (or NaN appears) the radix passes run. */
#define SAMPLED_MIN_N ((int64_t)1 << 18)
#define SAMPLES 65536

/* LSD radix sort of n uint64 (bytes above the largest key's top byte are skipped). */
static int sort_u64(uint64_t *a, int64_t n) {
    uint64_t *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp), mx = 0;
    if (!tmp) return -1;
    for (int64_t i = 0; i < n; i++) if (a[i] > mx) mx = a[i];
    for (int sh = 0; sh < 64 && (mx >> sh); sh += 8) {
        int64_t cnt[257] = {0};
        for (int64_t i = 0; i < n; i++) cnt[((a[i] >> sh) & 0xff) + 1]++;
        for (int d = 0; d < 256; d++) cnt[d + 1] += cnt[d];
        for (int64_t i = 0; i < n; i++) tmp[cnt[(a[i] >> sh) & 0xff]++] = a[i];
        memcpy(a, tmp, (size_t)n * sizeof *a);
    }
    free(tmp);
    return 0;
}

/* Counts eligible keys < lo and collects keys in [lo, hi] of one block into `local`. */
static int64_t bracket_range(int code, const void *x, const uint8_t *elig, int64_t s, int64_t e,
                             int absolute, uint64_t lo, uint64_t hi, uint64_t *local,
                             int64_t *below, int64_t *neligible, int *bad) {
    int nan = 0;
    int64_t m = 0, bl = 0, cnt = 0;
#define BRACKET_LOOP                                                            \
    for (int64_t i = s; i < e; i++) {                                           \
        if (elig && !elig[i]) continue;                                         \
        uint64_t kk = KEY(x, i, absolute, &nan);                                \
        cnt++;                                                                  \
        bl += kk < lo;                                                          \
        local[m] = kk;                                                          \
        m += (kk >= lo) & (kk <= hi);                                           \
    }
    KEY_DISPATCH(code, BRACKET_LOOP)
#undef BRACKET_LOOP
    *below += bl;
    *neligible += cnt;
    *bad |= nan;
    return m;
}

#ifdef LC_X86
LC_TARGET_AVX512 static int64_t bracket_range_f32_avx512(const float *x, const uint8_t *elig,
                                                         int64_t s, int64_t e, int absolute,
                                                         uint32_t lo, uint32_t hi,
                                                         uint64_t *local, int64_t *below,
                                                         int64_t *neligible, int *bad) {
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const __m512i vlo = _mm512_set1_epi32((int)lo), vhi = _mm512_set1_epi32((int)hi);
    const __m512i nanlim = _mm512_set1_epi32(0x7f800000);
    const __m128i zero8 = _mm_setzero_si128();
    int64_t m = 0, bl = 0, cnt = 0, i = s;
    int nan = 0;
    uint32_t lanes[16];
    for (; i + 16 <= e; i += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(x + i));
        if (absolute) u = _mm512_and_si512(u, absm);
        __mmask16 el = 0xffff;
        if (elig) el = _mm_cmpneq_epi8_mask(_mm_loadu_si128((const __m128i *)(elig + i)), zero8);
        if (_mm512_mask_cmpgt_epu32_mask(el, _mm512_and_si512(u, absm), nanlim)) nan = 1;
        u = _mm512_mask_mov_epi32(u, _mm512_cmpeq_epi32_mask(u, sign), _mm512_setzero_si512());
        __mmask16 neg = _mm512_test_epi32_mask(u, sign);
        __m512i k = _mm512_mask_xor_epi32(_mm512_or_si512(u, sign), neg, u,
                                          _mm512_set1_epi32(-1));
        cnt += __builtin_popcount(el);
        bl += __builtin_popcount(el & _mm512_cmplt_epu32_mask(k, vlo));
        __mmask16 in = el & _mm512_cmpge_epu32_mask(k, vlo) & _mm512_cmple_epu32_mask(k, vhi);
        if (in) {
            _mm512_mask_compressstoreu_epi32(lanes, in, k);
            int c = __builtin_popcount(in);
            for (int j = 0; j < c; j++) local[m++] = lanes[j];
        }
    }
    *below += bl;
    *neligible += cnt;
    *bad |= nan;
    return m + bracket_range(LC_F32, x, elig, i, e, absolute, lo, hi, local + m, below,
                             neligible, bad);
}
#endif

/* Returns 1 and fills *th (or sets *st) when the sampled bracket worked, 0 to fall back. */
static int threshold_sampled(const lc_seg *segs, int64_t nseg, const work_block *blocks,
                             int64_t nb, int code, int absolute, int64_t k, int nt,
                             threshold *th, lc_status *st) {
    int64_t n = 0;
    for (int64_t s = 0; s < nseg; s++) n += segs[s].n;
    if (n < SAMPLED_MIN_N || k <= 0) return 0;
    /* 1. an evenly spaced sample of eligible keys, sorted */
    uint64_t *smp = malloc(SAMPLES * sizeof *smp);
    if (!smp) return 0;
    int64_t stride = n / SAMPLES, ns = 0, seg = 0, base = 0;
    int nan = 0;
    for (int64_t j = 0; j < SAMPLES; j++) {
        int64_t f = j * stride;
        while (f >= base + segs[seg].n) base += segs[seg++].n;
        int64_t i = f - base;
        if (segs[seg].elig && !segs[seg].elig[i]) continue;
        uint64_t kk = 0;
#define SAMPLE_KEY kk = KEY(segs[seg].x, i, absolute, &nan);
        KEY_DISPATCH(code, SAMPLE_KEY)
#undef SAMPLE_KEY
        smp[ns++] = kk;
    }
    if (nan || ns < 1024 || sort_u64(smp, ns) < 0) { free(smp); return 0; }
    /* the k-th key's rank in the sample, with a margin of several standard deviations
     * (the rank's is at most sqrt(ns) / 2; the eligible fraction's adds about as much) */
    double elig_est = (double)n * (double)ns / (double)SAMPLES;
    double p = (double)k / elig_est;
    if (p > 1.0) p = 1.0;
    double r = p * (double)ns, margin = 3.0 * sqrt((double)ns) + 64.0;
    int64_t rlo = (int64_t)(r - margin), rhi = (int64_t)(r + margin);
    uint64_t lo = rlo <= 0 ? 0 : smp[rlo];
    uint64_t hi = rhi >= ns ? ~(uint64_t)0 : smp[rhi];
    free(smp);
    /* 2. one pass: keys below the bracket counted, keys inside collected */
    const int64_t cap = n / 16 + 4096; /* bounds the extra memory: half a byte per entry */
    uint64_t *cand = malloc((size_t)cap * sizeof *cand);
    if (!cand) return 0;
    int64_t below = 0, eligible = 0, pos = 0;
    int bad = 0, overflow = 0;
#ifdef LC_X86
    const int fast = code == LC_F32 && lc_simd() >= LC_SIMD_AVX512;
#endif
    LC_OMP(parallel num_threads(nt) if (nt > 1) reduction(+ : below, eligible) reduction(| : bad, overflow))
    {
        uint64_t *local = malloc((size_t)LC_BLOCK * sizeof *local);
        if (!local) overflow = 1;
        LC_OMP(for schedule(dynamic, 2))
        for (int64_t b = 0; b < nb; b++) {
            if (!local) continue;
            const lc_seg *sg = &segs[blocks[b].seg];
            int64_t m;
#ifdef LC_X86
            if (fast)
                m = bracket_range_f32_avx512(sg->x, sg->elig, blocks[b].start, blocks[b].end,
                                             absolute, (uint32_t)lo,
                                             hi > 0xffffffffull ? 0xffffffffu : (uint32_t)hi,
                                             local, &below, &eligible, &bad);
            else
#endif
                m = bracket_range(code, sg->x, sg->elig, blocks[b].start, blocks[b].end,
                                  absolute, lo, hi, local, &below, &eligible, &bad);
            int64_t off;
            LC_OMP(atomic capture)
            { off = pos; pos += m; }
            if (off + m <= cap) memcpy(cand + off, local, (size_t)m * sizeof *local);
            else overflow = 1;
        }
        free(local);
    }
    if (bad) { free(cand); *st = LC_ERR_NAN; return 1; }
    if (k > eligible) { free(cand); *st = LC_ERR_RANGE; return 1; }
    if (overflow || below >= k || below + pos < k) { free(cand); return 0; }
    /* 3. the (k - below)-th lowest collected key is the threshold; the candidates' order
     * does not matter -- ties are resolved in flat order by the mask pass */
    int64_t j = k - below;
    uint64_t span = 0; /* keys relative to lo need only the bits of hi - lo */
    for (int64_t i = 0; i < pos; i++) {
        cand[i] -= lo;
        if (cand[i] > span) span = cand[i];
    }
    int span_bits = 1;
    while (span_bits < 64 && (span >> span_bits)) span_bits++;
    lc_seg cs = {cand, NULL, NULL, pos};
    int64_t cnb = 0;
    work_block *cblocks = make_blocks(&cs, 1, LC_BLOCK, &cnb);
    threshold ct;
    /* a few in-cache passes: extra threads would cost more in barriers than they save */
    lc_status s2 = cblocks ? threshold_radix(&cs, cblocks, cnb, LC_U64, 0, j, 11,
                                             pos < ((int64_t)1 << 22) ? 1 : nt, span_bits, &ct)
                           : LC_ERR_NOMEM;
    free(cblocks);
    if (s2 != LC_OK) { free(cand); return 0; }
    /* ct names the j-th key's bin at some digit level: either the exact key (tshift 0) or
     * a bin pruned whole, whose largest key is then the j-th; k == all: the largest key */
    uint64_t T = 0;
    int64_t lessT = 0, eqT = 0;
    for (int64_t i = 0; i < pos; i++)
        if ((ct.mode == THRESH_PRUNE_ALL || (cand[i] >> ct.tshift) == ct.T) && cand[i] > T)
            T = cand[i];
    for (int64_t i = 0; i < pos; i++) { lessT += cand[i] < T; eqT += cand[i] == T; }
    free(cand);
    th->mode = THRESH_SPLIT;
    th->tshift = 0;
    th->T = T + lo;
    th->krem = j - lessT;
    th->prune_ties = th->krem == eqT;
    return 1;
}

/* Writes the mask for a threshold (the last pass, see the top of the file). */
static lc_status write_mask(const lc_seg *segs, const work_block *blocks, int64_t nb, int code,
                            int absolute, const threshold *th, int nt) {
    (void)nt; /* used by the OpenMP clauses only */
    if (th->mode == THRESH_KEEP_ALL || th->mode == THRESH_PRUNE_ALL) {
        LC_OMP(parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 2))
        for (int64_t b = 0; b < nb; b++) {
            const lc_seg *sg = &segs[blocks[b].seg];
            for (int64_t i = blocks[b].start; i < blocks[b].end; i++)
                sg->out[i] = th->mode == THRESH_KEEP_ALL && (!sg->elig || sg->elig[i]);
        }
        return LC_OK;
    }
    int64_t *ties = calloc((size_t)(nb ? nb : 1), sizeof *ties);
    if (!ties) return LC_ERR_NOMEM;
#ifdef LC_X86
    const int fast = code == LC_F32 && lc_simd() >= LC_SIMD_AVX512;
#endif
    LC_OMP(parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 2))
    for (int64_t b = 0; b < nb; b++) {
        const lc_seg *sg = &segs[blocks[b].seg];
#ifdef LC_X86
        if (fast) {
            ties[b] = write_range_f32_avx512(sg->x, sg->elig, sg->out, blocks[b].start,
                                             blocks[b].end, absolute, th->tshift,
                                             (uint32_t)th->T, th->prune_ties);
            continue;
        }
#endif
        ties[b] = write_range(code, sg->x, sg->elig, sg->out, blocks[b].start, blocks[b].end,
                              absolute, th->tshift, th->T, th->prune_ties);
    }
    if (!th->prune_ties) {
        /* ties[b] becomes the number of block b's ties to prune, in flat order */
        int64_t need = th->krem;
        for (int64_t b = 0; b < nb; b++) {
            int64_t q = ties[b] < need ? ties[b] : need;
            need -= q;
            ties[b] = q;
        }
        LC_OMP(parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 2))
        for (int64_t b = 0; b < nb; b++) {
            if (!ties[b]) continue;
            const lc_seg *sg = &segs[blocks[b].seg];
            prune_first_ties(code, sg->x, sg->elig, sg->out, blocks[b].start, blocks[b].end,
                             absolute, th->tshift, th->T, ties[b]);
        }
    }
    free(ties);
    return LC_OK;
}

/* Marks the k lowest eligible scores of the segments as pruned (see the top of the file).
 * `width`: digit bits per radix pass; `nt`: threads.  LC_ERR_NAN for a NaN among eligible
 * scores, LC_ERR_RANGE when k exceeds the eligible count. */
static lc_status select_lowest(const lc_seg *segs, int64_t nseg, int code, int absolute,
                               int64_t k, int width, int64_t block, int nt) {
    if (!key_bits(code)) return LC_ERR_DTYPE;
    if (code == LC_U64) absolute = 0;
    int64_t nb = 0;
    work_block *blocks = make_blocks(segs, nseg, block, &nb);
    if (!blocks) return LC_ERR_NOMEM;
    threshold th = {THRESH_KEEP_ALL, 0, 0, 0, 0};
    lc_status st = LC_OK;
    if (!threshold_sampled(segs, nseg, blocks, nb, code, absolute, k, nt, &th, &st))
        st = threshold_radix(segs, blocks, nb, code, absolute, k, width, nt, 0, &th);
    if (st == LC_OK) st = write_mask(segs, blocks, nb, code, absolute, &th, nt);
    free(blocks);
    return st;
}

/* ------------------------------------------------------------------ per-row selection */
/* Each row of a [rows, cols] score matrix prunes its own k lowest (the Wanda convention),
 * with the same ordering and tie rule as select_lowest within the row.
 *
 * A row is small, so it is selected in a scratch buffer: the keys of its eligible entries
 * with their columns, narrowed by MSD radix passes of 8 bits.  Each pass prunes the
 * candidates below the digit that holds the k-th key and compacts the rest stably, so the
 * ties left at the end are still in column order and the first ones are pruned. */
static lc_status select_one_row(const void *x, int code, const uint8_t *elig, uint8_t *out,
                                int64_t cols, int absolute, int64_t k, uint64_t *key,
                                int64_t *col) {
    int nan = 0;
    int64_t n = 0;
#define ROW_KEYS                                                        \
    for (int64_t j = 0; j < cols; j++) {                                \
        if (elig && !elig[j]) { out[j] = 0; continue; }                 \
        key[n] = KEY(x, j, absolute, &nan);                             \
        col[n++] = j;                                                   \
        out[j] = 1;                                                     \
    }
    KEY_DISPATCH(code, ROW_KEYS)
#undef ROW_KEYS
    if (nan) return LC_ERR_NAN;
    if (k > n) return LC_ERR_RANGE;
    int64_t c = n, krem = k;
    int shift = key_bits(code);
    while (krem > 0 && krem < c && shift > 0) {
        int w = shift >= 8 ? 8 : shift;
        shift -= w;
        uint64_t dmask = ((uint64_t)1 << w) - 1;
        int64_t hist[256] = {0};
        for (int64_t i = 0; i < c; i++) hist[(key[i] >> shift) & dmask]++;
        int64_t below = 0;
        uint64_t d = 0;
        while (below + hist[d] < krem) below += hist[d++];
        int64_t m = 0;
        for (int64_t i = 0; i < c; i++) { /* branch-free: digits are unpredictable */
            uint64_t dg = (key[i] >> shift) & dmask, kk = key[i];
            int64_t cc = col[i];
            out[cc] = (uint8_t)(out[cc] & (dg >= d));
            key[m] = kk;
            col[m] = cc;
            m += dg == d;
        }
        krem -= below;
        c = m;
    }
    /* the c candidates left share their key (or are all pruned): prune the first krem */
    for (int64_t i = 0; i < krem; i++) out[col[i]] = 0;
    return LC_OK;
}

static lc_status select_rows(const void *x, int code, const uint8_t *elig, uint8_t *out,
                             int64_t rows, int64_t cols, int absolute, int64_t k) {
    int isz = lc_dtype_itemsize(code);
    lc_status st = LC_OK;
    if (code == LC_U64) absolute = 0;
    LC_OMP(parallel num_threads(lc_threads()))
    {
        uint64_t *key = malloc((size_t)(cols ? cols : 1) * sizeof *key);
        int64_t *col = malloc((size_t)(cols ? cols : 1) * sizeof *col);
        lc_status mine = (key && col) ? LC_OK : LC_ERR_NOMEM;
        LC_OMP(for schedule(dynamic, 64))
        for (int64_t r = 0; r < rows; r++) {
            if (mine == LC_ERR_NOMEM) continue;
            lc_status s = select_one_row((const char *)x + r * cols * isz, code,
                                         elig ? elig + r * cols : NULL, out + r * cols, cols,
                                         absolute, k, key, col);
            if (s != LC_OK && (mine == LC_OK || s < mine)) mine = s;
        }
        free(key);
        free(col);
        if (mine != LC_OK) {
            /* the smallest code wins, so the error does not depend on thread timing */
            LC_OMP(critical(lc_prune_rows))
            if (st == LC_OK || mine < st) st = mine;
        }
    }
    return st;
}

/* ------------------------------------------------------------------ N:M groups */
/* The array is viewed as [outer, L, inner]; along L every m consecutive entries form a group
 * in which the n lowest scores are pruned (ties: lower position first). */
#ifdef LC_X86
/* AVX-512 N:M for float32 |scores| with contiguous groups (inner == 1) and m in 2, 4, 8, 16:
 * 16 entries (16/m groups) per step.  |x| bits compare like the values (and -0.0 becomes
 * +0.0), so the ranks -- and the mask -- are the scalar path's. */
LC_TARGET_AVX512 static int nm_rows_f32_avx512(const float *x, uint8_t *out, int64_t total_groups,
                                               int64_t n, int64_t m) {
    const __m512i absm = _mm512_set1_epi32(0x7fffffff);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i gbase = _mm512_andnot_si512(_mm512_set1_epi32((int)m - 1), lane);
    const __m512i pos = _mm512_and_si512(_mm512_set1_epi32((int)m - 1), lane);
    const __m512i vn = _mm512_set1_epi32((int)n);
    const __m128i one = _mm_set1_epi8(1);
    __m512i idx[15];
    __mmask16 before[15]; /* lane's rotated partner sits at a lower position in the group */
    for (int r = 1; r < m; r++) {
        __m512i p = _mm512_and_si512(_mm512_add_epi32(pos, _mm512_set1_epi32(r)),
                                     _mm512_set1_epi32((int)m - 1));
        idx[r - 1] = _mm512_or_si512(gbase, p);
        before[r - 1] = _mm512_cmplt_epi32_mask(p, pos);
    }
    int64_t nelem = total_groups * m;
    int bad = 0;
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static) reduction(| : bad))
    for (int64_t blk = 0; blk < nelem / 16; blk++) {
        int64_t j = blk * 16;
        __m512i k = _mm512_and_si512(_mm512_loadu_si512((const void *)(x + j)), absm);
        if (_mm512_cmpgt_epi32_mask(k, _mm512_set1_epi32(0x7f800000))) bad = 1;
        __m512i rank = _mm512_setzero_si512();
        for (int r = 0; r < m - 1; r++) {
            __m512i o = _mm512_permutexvar_epi32(idx[r], k);
            __mmask16 lower = _mm512_cmplt_epi32_mask(o, k) |
                              (_mm512_cmpeq_epi32_mask(o, k) & before[r]);
            rank = _mm512_mask_add_epi32(rank, lower, rank, _mm512_set1_epi32(1));
        }
        _mm_storeu_si128((__m128i *)(out + j),
                         _mm_maskz_mov_epi8(_mm512_cmpge_epi32_mask(rank, vn), one));
    }
    return bad;
}
#endif

static lc_status nm_mask(const void *x, int code, uint8_t *out, int64_t outer, int64_t L,
                         int64_t inner, int64_t n, int64_t m, int absolute) {
    int64_t groups = L / m, total = outer * groups;
    int bad = 0;
#ifdef LC_X86
    if (code == LC_F32 && absolute && inner == 1 && (m == 2 || m == 4 || m == 8 || m == 16) &&
        lc_simd() >= LC_SIMD_AVX512) {
        /* whole 16-entry steps in SIMD, the remaining groups below */
        int64_t done = total * m / 16 * 16 / m;
        bad = nm_rows_f32_avx512(x, out, done, n, m);
        x = (const float *)x + done * m;
        out += done * m;
        total -= done;
        outer = total; /* remaining groups, as [total, m, 1] */
        groups = 1;
        L = m;
    }
#endif
    /* MM is m as a compile-time constant for the common 4 and 8 (the rank loops unroll) */
#define NM_GROUPS(MM)                                                                   \
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static) reduction(| : bad))  \
    for (int64_t t = 0; t < total; t++) {                                               \
        int64_t o = t / groups, g = t % groups;                                         \
        int64_t base = (o * L + g * (MM)) * inner;                                      \
        uint64_t keys[128];                                                             \
        int nan = 0;                                                                    \
        for (int64_t i = 0; i < inner; i++) {                                           \
            for (int64_t j = 0; j < (MM); j++)                                          \
                keys[j] = KEY(x, base + j * inner + i, absolute, &nan);                 \
            for (int64_t j = 0; j < (MM); j++) {                                        \
                int64_t rank = 0;                                                       \
                for (int64_t l = 0; l < (MM); l++)                                      \
                    rank += (keys[l] < keys[j]) | ((keys[l] == keys[j]) & (l < j));     \
                out[base + j * inner + i] = rank >= n;                                  \
            }                                                                           \
        }                                                                               \
        bad |= nan;                                                                     \
    }
#define NM_DISPATCH_M                                                                   \
    if (m == 4) { NM_GROUPS(4) } else if (m == 8) { NM_GROUPS(8) } else { NM_GROUPS(m) }
    KEY_DISPATCH(code, NM_DISPATCH_M)
#undef NM_DISPATCH_M
#undef NM_GROUPS
    return bad ? LC_ERR_NAN : LC_OK;
}

/* ------------------------------------------------------------------ norms */
/* The norms channel_norms and block_norms compute, exported as _C.norm_kinds.  Each is named
 * by the norm order it computes, as float() reads it (the Python layer maps an order to its
 * kind that way); "p" is the general path (sum |x|^p)^(1/p) for any other order p > 0.
 * inf is max |x|, -inf min |x|. */
#define NORM_KINDS(X)        \
    X(NORM_P, "p")           \
    X(NORM_L1, "1")          \
    X(NORM_L2, "2")          \
    X(NORM_INF, "inf")       \
    X(NORM_NEGINF, "-inf")
enum { NORM_KINDS(LC_CODE_ENUM) NORM_NKINDS };

static inline double norm_acc(double acc, double v, int kind, double p) {
    double a = fabs(v);
    switch (kind) {
    case NORM_L1: return acc + a;
    case NORM_L2: return acc + a * a;
    case NORM_INF: return a > acc || isnan(a) ? a : acc;
    case NORM_NEGINF: return a < acc || isnan(a) ? a : acc;
    default: return acc + pow(a, p);
    }
}
static inline double norm_init(int kind) { return kind == NORM_NEGINF ? INFINITY : 0.0; }
static inline double norm_finish(double acc, int kind, double p) {
    switch (kind) {
    case NORM_L2: return sqrt(acc);
    case NORM_P: return pow(acc, 1.0 / p);
    default: return acc;
    }
}

/* Norm of every channel c of x viewed as [outer, C, inner], over outer and inner, in double;
 * order within a channel: outer then inner.  Parallel over chunks of channels; the channels
 * of a chunk are summed side by side (independent sums, each in the order above), so the
 * adds of different channels overlap instead of waiting on one another.  With inner == 1 a
 * chunk is CN_WIDE channels, so every row is read in long contiguous runs; otherwise
 * CN_CHUNK channels, CN_CHUNK sequential streams.  The common cases (L1 / L2 of float32,
 * float64, float16, bfloat16) have their loops written out: the same operations as
 * norm_acc, without its two switches per element. */
#define CN_CHUNK 16
#define CN_WIDE 256
#define CN_LOOP(T, LOAD, STEP)                                                      \
    for (int64_t o = 0; o < outer; o++) {                                           \
        const T *row = (const T *)x + (o * C + c0) * inner;                          \
        if (inner == 1) {                                                           \
            for (int64_t c = 0; c < w; c++) { double v = LOAD(row[c]); STEP; }      \
        } else {                                                                    \
            for (int64_t i = 0; i < inner; i++)                                     \
                for (int64_t c = 0; c < w; c++) {                                   \
                    double v = LOAD(row[c * inner + i]);                            \
                    STEP;                                                           \
                }                                                                   \
        }                                                                           \
    }
#define CN_F32(u) ((double)(u))
#define CN_F16(u) ((double)lc_f16_to_f32(u))
#define CN_BF16(u) ((double)lc_bf16_to_f32(u))
#define CN_L1 acc[c] += fabs(v)
#define CN_L2 acc[c] += v * v
#define CN_KINDS(T, LOAD)                                               \
    if (kind == NORM_L1) { CN_LOOP(T, LOAD, CN_L1) } else { CN_LOOP(T, LOAD, CN_L2) }

static void channel_norms_chunk(const void *x, int code, int64_t outer, int64_t C,
                                int64_t inner, int64_t c0, int64_t w, int kind, double p,
                                double *acc) {
    if (kind == NORM_L1 || kind == NORM_L2) {
        switch (code) {
        case LC_F32: CN_KINDS(float, CN_F32) return;
        case LC_F64: CN_KINDS(double, CN_F32) return;
        case LC_F16: CN_KINDS(uint16_t, CN_F16) return;
        case LC_BF16: CN_KINDS(uint16_t, CN_BF16) return;
        default: break;
        }
    }
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++)
            for (int64_t c = 0; c < w; c++)
                acc[c] = norm_acc(acc[c], lc_load_f64(x, code, (o * C + c0 + c) * inner + i),
                                  kind, p);
}
#undef CN_KINDS
#undef CN_L2
#undef CN_L1
#undef CN_BF16
#undef CN_F16
#undef CN_F32
#undef CN_LOOP

/* One tensor of a channel_norms call; `first` numbers its first chunk among all jobs'. */
typedef struct {
    const void *x;
    int code;
    int64_t outer, C, inner, first;
    double *out;
} cn_job;

static int64_t cn_chunk_of(const cn_job *j) { return j->inner == 1 ? CN_WIDE : CN_CHUNK; }

/* The norms of every job in one parallel loop over all their chunks: a step that scores
 * many small tensors wakes the thread team once, not once per tensor (on a busy machine a
 * wake-up can cost a scheduler slice).  Chunks are independent, so neither the schedule nor
 * the thread count changes a bit of the result. */
static void channel_norms_jobs(cn_job *jobs, int64_t njobs, int kind, double p) {
    int64_t total = 0, work = 0;
    for (int64_t t = 0; t < njobs; t++) {
        jobs[t].first = total;
        total += lc_nblocks(jobs[t].C, cn_chunk_of(&jobs[t]));
        work += jobs[t].outer * jobs[t].C * jobs[t].inner;
    }
    int nt = lc_threads_for(work);
    (void)nt; /* used by the OpenMP clauses only */
    LC_OMP(parallel for num_threads(nt) if (nt > 1) schedule(dynamic, 1))
    for (int64_t u = 0; u < total; u++) {
        int64_t lo = 0, hi = njobs - 1; /* the job whose chunks hold u */
        while (lo < hi) {
            int64_t mid = (lo + hi + 1) / 2;
            if (jobs[mid].first <= u) lo = mid; else hi = mid - 1;
        }
        const cn_job *j = &jobs[lo];
        int64_t chunk = cn_chunk_of(j), c0 = (u - j->first) * chunk;
        int64_t w = j->C - c0 < chunk ? j->C - c0 : chunk;
        double acc[CN_WIDE];
        for (int64_t c = 0; c < w; c++) acc[c] = norm_init(kind);
        channel_norms_chunk(j->x, j->code, j->outer, j->C, j->inner, c0, w, kind, p, acc);
        for (int64_t c = 0; c < w; c++) j->out[c0 + c] = norm_finish(acc[c], kind, p);
    }
}

static void channel_norms(const void *x, int code, int64_t outer, int64_t C, int64_t inner,
                          int kind, double p, double *out) {
    cn_job job = {x, code, outer, C, inner, 0, out};
    channel_norms_jobs(&job, 1, kind, p);
}
#undef CN_WIDE
#undef CN_CHUNK

/* Norms of [br, bc] blocks of a [R, C] matrix (edge blocks are partial), in double; order
 * within a block: row then column.  Parallel over block rows. */
static void block_norms(const void *x, int code, int64_t R, int64_t C, int64_t br, int64_t bc,
                        int kind, double p, double *out) {
    int64_t nbr = lc_nblocks(R, br), nbc = lc_nblocks(C, bc);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t bi = 0; bi < nbr; bi++) {
        double *o = out + bi * nbc;
        for (int64_t bj = 0; bj < nbc; bj++) o[bj] = norm_init(kind);
        int64_t r1 = R - bi * br < br ? R : bi * br + br;
        for (int64_t r = bi * br; r < r1; r++)
            for (int64_t c = 0; c < C; c++)
                o[c / bc] = norm_acc(o[c / bc], lc_load_f64(x, code, r * C + c), kind, p);
        for (int64_t bj = 0; bj < nbc; bj++) o[bj] = norm_finish(o[bj], kind, p);
    }
}

/* ------------------------------------------------------------------ Wanda statistic */
/* sumsq[j] += sum over rows of x[r, j]^2 (double, rows in order); x is [rows, cols]. */
static void accumulate_sumsq(const void *x, int code, int64_t rows, int64_t cols, double *sumsq) {
    const int64_t chunk = 64;
    int64_t nchunks = lc_nblocks(cols, chunk);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t q = 0; q < nchunks; q++) {
        int64_t c0 = q * chunk, c1 = cols - c0 < chunk ? cols : c0 + chunk;
        double acc[64];
        for (int64_t c = c0; c < c1; c++) acc[c - c0] = sumsq[c];
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = c0; c < c1; c++) {
                double v = lc_load_f64(x, code, r * cols + c);
                acc[c - c0] = acc[c - c0] + v * v;
            }
        for (int64_t c = c0; c < c1; c++) sumsq[c] = acc[c - c0];
    }
}

/* ------------------------------------------------------------------ apply and bake */
/* apply: out[i] = mask[i] ? x[i] : +0 (all-zero bits), by item size. */
static void apply_mask(const void *x, const uint8_t *mask, void *out, int64_t n, int isz) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * LC_BLOCK, e = n - s < LC_BLOCK ? n : s + LC_BLOCK;
        switch (isz) {
#define APPLY(T) { const T *xi = x; T *o = out; \
            for (int64_t i = s; i < e; i++) o[i] = mask[i] ? xi[i] : (T)0; } break;
        case 1: APPLY(uint8_t)
        case 2: APPLY(uint16_t)
        case 4: APPLY(uint32_t)
        case 8: APPLY(uint64_t)
#undef APPLY
        default: break;
        }
    }
}

/* bake: out = x * m elementwise in the weight's dtype, as torch computes orig * mask (f16 and
 * bf16 multiply in float32 and round once; with a 0/1 mask the product is exact: x, +-0 or
 * NaN for inf * 0).  The mask has its own float code. */
static void bake_mask(const void *x, int code, const void *m, int mcode, void *out, int64_t n) {
    int64_t nb = lc_nblocks(n, LC_BLOCK);
    LC_OMP(parallel for num_threads(lc_threads()) schedule(static))
    for (int64_t b = 0; b < nb; b++) {
        int64_t s = b * LC_BLOCK, e = n - s < LC_BLOCK ? n : s + LC_BLOCK;
        if (code == LC_F32 && mcode == LC_F32) {
            const float *xi = x, *mi = m;
            float *o = out;
            for (int64_t i = s; i < e; i++) o[i] = xi[i] * mi[i];
        } else if (code == LC_F64) {
            double *o = out;
            for (int64_t i = s; i < e; i++) o[i] = ((const double *)x)[i] * lc_load_f64(m, mcode, i);
        } else if (code == LC_F32) {
            float *o = out;
            for (int64_t i = s; i < e; i++) o[i] = ((const float *)x)[i] * lc_load_f32(m, mcode, i);
        } else {
            uint16_t *o = out;
            for (int64_t i = s; i < e; i++) {
                float v = lc_load_f32(x, code, i) * lc_load_f32(m, mcode, i);
                o[i] = code == LC_BF16 ? lc_f32_to_bf16(v) : lc_f32_to_f16(v);
            }
        }
    }
}

/* ------------------------------------------------------------------ Python entry points */
/* select_lowest(scores: list, eligible: list (array or None), out: list, code, absolute, k) */
static PyObject *py_select_lowest(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xs, *es, *os;
    int code, absolute;
    long long k;
    if (!PyArg_ParseTuple(args, "O!O!O!ipL", &PyList_Type, &xs, &PyList_Type, &es, &PyList_Type,
                          &os, &code, &absolute, &k))
        return NULL;
    Py_ssize_t nseg = PyList_GET_SIZE(xs);
    if (PyList_GET_SIZE(es) != nseg || PyList_GET_SIZE(os) != nseg) {
        PyErr_SetString(lc_ShapeError, "scores: eligible and out lists must match it in length");
        return NULL;
    }
    if (!key_bits(code)) return lc_raise_status(LC_ERR_DTYPE, "scores");
    lc_seg *segs = malloc((size_t)(nseg ? nseg : 1) * sizeof *segs);
    if (!segs) return PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < nseg; i++) {
        PyArrayObject *x, *o, *e = NULL;
        PyObject *eo = PyList_GET_ITEM(es, i);
        if (lc_arg_array(PyList_GET_ITEM(xs, i), "scores", code, 0, &x) < 0 ||
            lc_arg_array(PyList_GET_ITEM(os, i), "out", LC_BOOL, 1, &o) < 0 ||
            lc_check_size(o, "out", PyArray_SIZE(x)) < 0 ||
            (eo != Py_None && (lc_arg_array(eo, "mask", LC_BOOL, 0, &e) < 0 ||
                               lc_check_size(e, "mask", PyArray_SIZE(x)) < 0))) {
            free(segs);
            return NULL;
        }
        segs[i].x = PyArray_DATA(x);
        segs[i].elig = e ? PyArray_DATA(e) : NULL;
        segs[i].out = PyArray_DATA(o);
        segs[i].n = PyArray_SIZE(x);
    }
    lc_status st;
    int64_t total = 0; /* a small selection stays on this thread: same result, no team wake-up */
    for (Py_ssize_t i = 0; i < nseg; i++) total += segs[i].n;
    LC_NOGIL_BEGIN
    st = select_lowest(segs, nseg, code, absolute, (int64_t)k, 11, LC_BLOCK, lc_threads_for(total));
    LC_NOGIL_END
    free(segs);
    if (st == LC_ERR_RANGE) {
        PyErr_Format(lc_ArgumentError, "amount: %lld entries to prune exceeds the eligible count", k);
        return NULL;
    }
    if (st != LC_OK) return lc_raise_status(st, "scores");
    Py_RETURN_NONE;
}

/* select_rows(scores [rows, cols], code, mask or None, out, absolute, k) */
static PyObject *py_select_rows(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *eo, *oo;
    int code, absolute;
    long long k;
    if (!PyArg_ParseTuple(args, "OiOOpL", &xo, &code, &eo, &oo, &absolute, &k)) return NULL;
    PyArrayObject *x, *o, *e = NULL;
    if (lc_arg_array(xo, "scores", code, 0, &x) < 0 || lc_arg_array(oo, "out", LC_BOOL, 1, &o) < 0 ||
        lc_check_size(o, "out", PyArray_SIZE(x)) < 0)
        return NULL;
    if (eo != Py_None && (lc_arg_array(eo, "mask", LC_BOOL, 0, &e) < 0 || lc_check_size(e, "mask", PyArray_SIZE(x)) < 0))
        return NULL;
    if (PyArray_NDIM(x) != 2) {
        PyErr_SetString(lc_ShapeError, "scores: expected a 2-D array");
        return NULL;
    }
    if (!key_bits(code)) return lc_raise_status(LC_ERR_DTYPE, "scores");
    int64_t rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    const void *xp = PyArray_DATA(x);
    const uint8_t *ep = e ? PyArray_DATA(e) : NULL;
    uint8_t *op = PyArray_DATA(o);
    lc_status st;
    LC_NOGIL_BEGIN
    st = select_rows(xp, code, ep, op, rows, cols, absolute, (int64_t)k);
    LC_NOGIL_END
    if (st == LC_ERR_RANGE) {
        PyErr_Format(lc_ArgumentError, "amount: %lld entries to prune exceeds a row's eligible count", k);
        return NULL;
    }
    if (st != LC_OK) return lc_raise_status(st, "scores");
    Py_RETURN_NONE;
}

/* nm_mask(scores, code, out, outer, L, inner, n, m, absolute) */
static PyObject *py_nm_mask(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *oo;
    int code, absolute;
    long long outer, L, inner, n, m;
    if (!PyArg_ParseTuple(args, "OiOLLLLLp", &xo, &code, &oo, &outer, &L, &inner, &n, &m, &absolute))
        return NULL;
    PyArrayObject *x, *o;
    if (lc_arg_array(xo, "scores", code, 0, &x) < 0 || lc_arg_array(oo, "out", LC_BOOL, 1, &o) < 0 ||
        lc_check_size(o, "out", PyArray_SIZE(x)) < 0)
        return NULL;
    if (!key_bits(code) || code == LC_U64) return lc_raise_status(LC_ERR_DTYPE, "scores");
    if (m < 1 || m > 128 || n < 0 || n > m || L % m || outer * L * inner != PyArray_SIZE(x)) {
        PyErr_SetString(lc_ArgumentError, "m: bad group geometry (1 <= m <= 128, n <= m, m divides the axis)");
        return NULL;
    }
    const void *xp = PyArray_DATA(x);
    uint8_t *op = PyArray_DATA(o);
    lc_status st;
    LC_NOGIL_BEGIN
    st = nm_mask(xp, code, op, outer, L, inner, n, m, absolute);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "scores");
    Py_RETURN_NONE;
}

/* channel_norms(x, code, outer, C, inner, kind, p, out f64[C]) */
static PyObject *py_channel_norms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *oo;
    int code, kind;
    long long outer, C, inner;
    double p;
    if (!PyArg_ParseTuple(args, "OiLLLidO", &xo, &code, &outer, &C, &inner, &kind, &p, &oo))
        return NULL;
    PyArrayObject *x, *o;
    if (lc_arg_array(xo, "x", code, 0, &x) < 0 || lc_arg_array(oo, "out", LC_F64, 1, &o) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    if (kind < 0 || kind >= NORM_NKINDS) return lc_raise_status(LC_ERR_RANGE, "kind");
    if (outer * C * inner != PyArray_SIZE(x) || PyArray_SIZE(o) != C) {
        PyErr_SetString(lc_ShapeError, "x: geometry does not match its size");
        return NULL;
    }
    const void *xp = PyArray_DATA(x);
    double *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    channel_norms(xp, code, outer, C, inner, kind, p, op);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* channel_norms_list(jobs: list of (x, code, outer, C, inner, out f64[C]), kind, p) */
static PyObject *py_channel_norms_list(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *lo;
    int kind;
    double p;
    if (!PyArg_ParseTuple(args, "O!id", &PyList_Type, &lo, &kind, &p)) return NULL;
    if (kind < 0 || kind >= NORM_NKINDS) return lc_raise_status(LC_ERR_RANGE, "kind");
    Py_ssize_t n = PyList_GET_SIZE(lo);
    cn_job *jobs = malloc((size_t)(n ? n : 1) * sizeof *jobs);
    if (!jobs) return PyErr_NoMemory();
    for (Py_ssize_t t = 0; t < n; t++) {
        PyObject *xo, *oo;
        int code;
        long long outer, C, inner;
        PyArrayObject *x, *o;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(lo, t), "OiLLLO;jobs: expected (x, code, outer, "
                              "C, inner, out) tuples", &xo, &code, &outer, &C, &inner, &oo) ||
            lc_arg_array(xo, "x", code, 0, &x) < 0 || lc_arg_array(oo, "out", LC_F64, 1, &o) < 0) {
            free(jobs);
            return NULL;
        }
        if (!lc_is_float_code(code)) {
            free(jobs);
            return lc_raise_status(LC_ERR_DTYPE, "x");
        }
        if (outer < 0 || C < 0 || inner < 0 || outer * C * inner != PyArray_SIZE(x) ||
            PyArray_SIZE(o) != C) {
            free(jobs);
            PyErr_SetString(lc_ShapeError, "x: geometry does not match its size");
            return NULL;
        }
        cn_job j = {PyArray_DATA(x), code, outer, C, inner, 0, PyArray_DATA(o)};
        jobs[t] = j;
    }
    LC_NOGIL_BEGIN
    channel_norms_jobs(jobs, (int64_t)n, kind, p);
    LC_NOGIL_END
    free(jobs);
    Py_RETURN_NONE;
}

/* block_norms(x [R, C], code, br, bc, kind, p, out f64[ceil(R/br), ceil(C/bc)]) */
static PyObject *py_block_norms(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *oo;
    int code, kind;
    long long br, bc;
    double p;
    if (!PyArg_ParseTuple(args, "OiLLidO", &xo, &code, &br, &bc, &kind, &p, &oo)) return NULL;
    PyArrayObject *x, *o;
    if (lc_arg_array(xo, "x", code, 0, &x) < 0 || lc_arg_array(oo, "out", LC_F64, 1, &o) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    if (kind < 0 || kind >= NORM_NKINDS) return lc_raise_status(LC_ERR_RANGE, "kind");
    if (PyArray_NDIM(x) != 2 || br < 1 || bc < 1) {
        PyErr_SetString(lc_ShapeError, "x: expected a 2-D array and a positive block shape");
        return NULL;
    }
    int64_t R = PyArray_DIM(x, 0), C = PyArray_DIM(x, 1);
    if (PyArray_SIZE(o) != lc_nblocks(R, br) * lc_nblocks(C, bc)) {
        PyErr_SetString(lc_ShapeError, "out: wrong number of blocks");
        return NULL;
    }
    const void *xp = PyArray_DATA(x);
    double *op = PyArray_DATA(o);
    LC_NOGIL_BEGIN
    block_norms(xp, code, R, C, br, bc, kind, p, op);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* accumulate_sumsq(x [rows, cols], code, sumsq f64[cols]) */
static PyObject *py_accumulate_sumsq(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *so;
    int code;
    if (!PyArg_ParseTuple(args, "OiO", &xo, &code, &so)) return NULL;
    PyArrayObject *x, *s;
    if (lc_arg_array(xo, "x", code, 0, &x) < 0 || lc_arg_array(so, "sumsq", LC_F64, 1, &s) < 0) return NULL;
    if (!lc_is_float_code(code)) return lc_raise_status(LC_ERR_DTYPE, "x");
    if (PyArray_NDIM(x) != 2 || PyArray_SIZE(s) != PyArray_DIM(x, 1)) {
        PyErr_SetString(lc_ShapeError, "x: expected [rows, cols] matching sumsq");
        return NULL;
    }
    int64_t rows = PyArray_DIM(x, 0), cols = PyArray_DIM(x, 1);
    const void *xp = PyArray_DATA(x);
    double *sp = PyArray_DATA(s);
    LC_NOGIL_BEGIN
    accumulate_sumsq(xp, code, rows, cols, sp);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* apply_mask(x, mask, out): any item size; out may be x */
static PyObject *py_apply_mask(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *x, *m, *o;
    if (!PyArg_ParseTuple(args, "O!O!O!", &PyArray_Type, &x, &PyArray_Type, &m, &PyArray_Type, &o))
        return NULL;
    int isz = (int)PyArray_ITEMSIZE(x);
    if (!PyArray_CHKFLAGS(x, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED) ||
        !PyArray_CHKFLAGS(o, NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED | NPY_ARRAY_WRITEABLE) ||
        PyArray_ITEMSIZE(o) != isz || (isz != 1 && isz != 2 && isz != 4 && isz != 8)) {
        PyErr_SetString(lc_ArgumentError, "x: expected contiguous arrays of 1, 2, 4 or 8-byte items");
        return NULL;
    }
    if (lc_check_array(m, "mask", LC_BOOL, 0) < 0 || lc_check_size(m, "mask", PyArray_SIZE(x)) < 0 ||
        lc_check_size(o, "out", PyArray_SIZE(x)) < 0)
        return NULL;
    const void *xp = PyArray_DATA(x);
    const uint8_t *mp = PyArray_DATA(m);
    void *op = PyArray_DATA(o);
    int64_t n = PyArray_SIZE(x);
    LC_NOGIL_BEGIN
    apply_mask(xp, mp, op, n, isz);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

/* bake_mask(x, code, mask, mask_code, out) */
static PyObject *py_bake_mask(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *xo, *mo, *oo;
    int code, mcode;
    if (!PyArg_ParseTuple(args, "OiOiO", &xo, &code, &mo, &mcode, &oo)) return NULL;
    PyArrayObject *x, *m, *o;
    if (lc_arg_array(xo, "x", code, 0, &x) < 0 || lc_arg_array(mo, "mask", mcode, 0, &m) < 0 ||
        lc_arg_array(oo, "out", code, 1, &o) < 0 || lc_check_size(m, "mask", PyArray_SIZE(x)) < 0 ||
        lc_check_size(o, "out", PyArray_SIZE(x)) < 0)
        return NULL;
    if (code < LC_F32 || code > LC_BF16 || mcode < LC_F32 || mcode > LC_BF16)
        return lc_raise_status(LC_ERR_DTYPE, "x");
    const void *xp = PyArray_DATA(x), *mp = PyArray_DATA(m);
    void *op = PyArray_DATA(o);
    int64_t n = PyArray_SIZE(x);
    LC_NOGIL_BEGIN
    bake_mask(xp, code, mp, mcode, op, n);
    LC_NOGIL_END
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"select_lowest", py_select_lowest, METH_VARARGS,
     "select_lowest(scores, masks, outs, code, absolute, k): exact-k selection (see prune.c)."},
    {"select_rows", py_select_rows, METH_VARARGS,
     "select_rows(scores, code, mask, out, absolute, k): k lowest per row."},
    {"nm_mask", py_nm_mask, METH_VARARGS,
     "nm_mask(scores, code, out, outer, L, inner, n, m, absolute): prune n of every m."},
    {"channel_norms", py_channel_norms, METH_VARARGS,
     "channel_norms(x, code, outer, C, inner, kind, p, out): per-channel norms."},
    {"channel_norms_list", py_channel_norms_list, METH_VARARGS,
     "channel_norms_list(jobs, kind, p): channel_norms of (x, code, outer, C, inner, out) "
     "jobs in one parallel pass."},
    {"block_norms", py_block_norms, METH_VARARGS,
     "block_norms(x, code, br, bc, kind, p, out): norms of 2-D blocks."},
    {"accumulate_sumsq", py_accumulate_sumsq, METH_VARARGS,
     "accumulate_sumsq(x, code, sumsq): sumsq[j] += sum_r x[r, j]^2."},
    {"apply_mask", py_apply_mask, METH_VARARGS, "apply_mask(x, mask, out): out = mask ? x : 0."},
    {"bake_mask", py_bake_mask, METH_VARARGS, "bake_mask(x, code, mask, mcode, out): out = x * mask."},
    {NULL, NULL, 0, NULL},
};

int lc_init_prune(PyObject *m) {
    if (LC_ADD_CODE_TABLE(m, "norm_kinds", NORM_KINDS) < 0) return -1;
    return lc_add_methods(m, methods);
}
