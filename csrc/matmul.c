/* matmul.c: quantized Linear layers, y = x @ W.T + b, with W kept packed.
 *
 * 1. int8 dynamic Linear (i8): W int8 [N, K] symmetric per output channel (scale sw[n]); each
 *    row of x is quantized at run time to int8 symmetric (sx[m] = amax/127, q = rint(x*127/amax),
 *    clamped to +-127).  acc = sum_k xq*W is exact in int32 (K <= 65536), and
 *        y[m, n] = (float)acc * (sx[m] * sw[n]) + b[n].
 *    Paths: scalar; AVX2 (int8 widened to int16, vpmaddwd: exact, no saturation); AVX-VNNI and
 *    AVX-512 VNNI (vpdpbusd is u8 x s8: x is offset to u8 = xq + 128, and 128 * rowsum(W) is
 *    subtracted afterwards; vpdpbusd does not saturate, and |acc| < 2^31 for K <= 65536).
 *
 * 2. Block-quantized weight-only Linear (blk): W as unsigned codes q (4 or 8 bits) in groups of
 *    G (a multiple of 32) along K, per (channel, group) scale s, integer zero point z, and an
 *    optional float offset m:  w = s * (q - z) + m.  This covers litecomp int4/int8 group
 *    quantization (symmetric and affine) and GGUF Q4_0 (z = 8), Q4_1 (z = 0, m = min) and Q8_0
 *    (q = w + 128, z = 128).  x is quantized per 32-block as llama.cpp does (Q8 activations):
 *    dx[b] = amax_b/127, xq = rint(x*127/amax_b); X[g] = sum of x over the group (float, in
 *    order).  Per channel, the definition is
 *        for each group g:  A = 0;  for each 32-block b of g:
 *                               A = A + dx[b] * (float)(sum_b q*xq - z * sum_b xq)
 *                           y = y + s*A;  if m: y = y + m*X[g]
 *        y = y + bias
 *    Integer parts are exact; the float operations happen in this order on every path.
 *
 * 3. NF4 (bitsandbytes): codes 0..15 index the NF4 table, blocks of B along K with an absmax
 *    each; float activations.  y = sum_blocks absmax * (sum_k table[q]*x[k]) (in k order).
 *
 * The weight comes in as the quantized tensor stores it and is packed in one pass, reading
 * the codes where they are (no unpacked copy): a source (LC_MATMUL_SOURCES) says how.
 *
 * Packed layouts, defined here only (tiles of 16 output channels; channels padded with zeros
 * to a multiple of 16).  Python never indexes them: matmul_pack writes them, matmul_unpack
 * reads them back, matmul_tile_params lays out the per-group parameters.
 *  i8:  [tile][K/4][16 lanes][4 bytes]                    byte = W[16*tile + lane, 4*kq + i]
 *  blk4:[tile][K/32][4 chunks][16 lanes][4 bytes]         low nibble  = q[ch, 32b + 4t + i],
 *                                                          high nibble = q[ch, 32b + 16 + 4t + i]
 *  blk8:[tile][K/32][8 chunks][16 lanes][4 bytes]         byte = q[ch, 32b + 4t + i]
 *  nf4: [tile][K][8 bytes]                                 byte j: low nibble lane 2j,
 *                                                          high nibble lane 2j+1
 *  Per-group parameters: [tile][G][16] for s, z and m (and the NF4 absmax); i8 scales [tile][16].
 */
#include "litecomp.h"
#include "quant.h"
#include "gguf.h"

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>

#define NT 16          /* channels per tile */
#define QBLK 32        /* activation block of the blk kernels */
#define MAX_K 65536    /* keeps every int32 accumulation exact */
#define PF_DIST 2048   /* software prefetch distance of the block kernels, bytes */
#define ROW_CHUNK 64   /* i8 work item: up to 64 rows x 4 tiles, a fixed 2-D grid */
#define TILE_CHUNK 4

/* ------------------------------------------------------------------ code tables */
/* Exported as _C.matmul_paths, _C.matmul_layouts and _C.matmul_sources (docs/conventions.md,
 * "Code tables").
 *
 * Kernel paths; "auto" picks the best one this CPU has.  The names are litecomp's SIMD level
 * names (avx2, avx512_vnni); avx_vnni is AVX-VNNI, the 256-bit VNNI of Alder Lake and later
 * cores, which only these kernels use. */
#define MATMUL_PATHS(X)                                                               \
    X(PATH_SCALAR, "scalar") X(PATH_AVX2, "avx2") X(PATH_AVX_VNNI, "avx_vnni")          \
    X(PATH_AVX512_VNNI, "avx512_vnni") X(PATH_AUTO, "auto")

/* Packed layouts (above). */
#define MATMUL_LAYOUTS(X) X(LAYOUT_I8, "i8") X(LAYOUT_BLK4, "blk4") X(LAYOUT_BLK8, "blk8") X(LAYOUT_NF4, "nf4")

/* Where the codes of row n, column k are read from when packing (data holds N equal rows):
 *   stream        LSB-first `bits`-bit codes (1..8), litecomp.quant.pack_codes / QTensor.data;
 *                 bits = 8 is one byte per code (uint8 codes, or int8 values for the i8 layout)
 *   bitsandbytes  4-bit codes, two per byte, the first in the HIGH nibble (Quant4.data)
 *   Q4_0, Q4_1    GGUF blocks: code j of a block in qs[j % 16], low nibble for j < 16
 *   Q8_0          GGUF blocks: the code is qs[j] + 128 (int8 qs) */
#define MATMUL_SOURCES(X)                                                             \
    X(SRC_STREAM, "stream") X(SRC_BITSANDBYTES, "bitsandbytes") X(SRC_Q4_0, "Q4_0")      \
    X(SRC_Q4_1, "Q4_1") X(SRC_Q8_0, "Q8_0")

enum { MATMUL_PATHS(LC_CODE_ENUM) NPATHS };
enum { MATMUL_LAYOUTS(LC_CODE_ENUM) NLAYOUTS };
enum { MATMUL_SOURCES(LC_CODE_ENUM) NSOURCES };
static const char *const path_names[] = {MATMUL_PATHS(LC_CODE_NAME)};

#if defined(LC_X86) && (defined(__clang__) || __GNUC__ >= 11)
#define LC_HAVE_AVX_VNNI 1
#define LC_TARGET_AVX_VNNI __attribute__((target("avx2,fma,avxvnni")))
#endif

static int path_available(int p) {
    switch (p) {
    case PATH_SCALAR: return 1;
    case PATH_AVX2: return lc_simd_detected() >= LC_SIMD_AVX2;
#ifdef LC_HAVE_AVX_VNNI
    case PATH_AVX_VNNI: return lc_simd_detected() >= LC_SIMD_AVX2 && lc_cpu_has_avx_vnni();
#endif
    case PATH_AVX512_VNNI: return lc_simd_detected() >= LC_SIMD_AVX512_VNNI;
    default: return 0;
    }
}

static int auto_path(void) {
    int lvl = lc_simd();
    if (lvl >= LC_SIMD_AVX512_VNNI) return PATH_AVX512_VNNI;
#ifdef LC_HAVE_AVX_VNNI
    if (lvl >= LC_SIMD_AVX2 && lc_cpu_has_avx_vnni()) return PATH_AVX_VNNI;
#endif
    if (lvl >= LC_SIMD_AVX2) return PATH_AVX2;
    return PATH_SCALAR;
}

static inline int32_t load_i32(const void *p) { int32_t v; memcpy(&v, p, 4); return v; }

/* ------------------------------------------------------------------ activation quantization */
/* Symmetric int8 of n floats with one scale (the definition):
 *   amax = max |x|;  non-finite -> -1;  amax == 0 -> q = 0, scale = 0;
 *   q = clamp(rne(x * (127/amax)), -127, 127);  scale = amax / 127.
 * (rne is lc_rne: nearbyintf's result without a libm call per element.)
 * `offset` 128 stores q + 128 as uint8 (for vpdpbusd), 0 stores q as int8. */
static int quant_i8_scalar(const float *x, int64_t n, int8_t *q, float *scale, int offset) {
    float amax = 0.0f;
    int bad = 0;
    for (int64_t k = 0; k < n; k++) {
        float a = fabsf(x[k]);
        bad |= !(a <= FLT_MAX);
        amax = a > amax ? a : amax;
    }
    if (bad) return -1;
    if (amax == 0.0f) {
        memset(q, offset ? 0x80 : 0, (size_t)n);
        *scale = 0.0f;
        return 0;
    }
    float inv = 127.0f / amax;
    for (int64_t k = 0; k < n; k++) {
        float r = lc_rne(x[k] * inv);
        r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
        q[k] = (int8_t)(uint8_t)((int)r + offset);
    }
    *scale = amax / 127.0f;
    return 0;
}

#ifdef LC_X86
LC_TARGET_AVX512 static int quant_i8_avx512(const float *x, int64_t n, int8_t *q, float *scale,
                                            int offset) {
    __m512 vmax = _mm512_setzero_ps();
    const __m512 fmax = _mm512_set1_ps(FLT_MAX);
    __mmask16 bad = 0;
    int64_t k = 0;
    for (; k < n; k += 16) {
        __mmask16 mk = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1u);
        __m512 a = _mm512_abs_ps(_mm512_maskz_loadu_ps(mk, x + k));
        bad |= _mm512_cmp_ps_mask(a, fmax, _CMP_NLE_UQ);
        vmax = _mm512_max_ps(vmax, a);
    }
    if (bad) return -1;
    float amax = _mm512_reduce_max_ps(vmax);
    if (amax == 0.0f) {
        memset(q, offset ? 0x80 : 0, (size_t)n);
        *scale = 0.0f;
        return 0;
    }
    const __m512 inv = _mm512_set1_ps(127.0f / amax);
    const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127),
                  off = _mm512_set1_epi32(offset);
    for (k = 0; k < n; k += 16) {
        __mmask16 mk = n - k >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - k)) - 1u);
        __m512i r = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, x + k), inv));
        r = _mm512_add_epi32(_mm512_min_epi32(_mm512_max_epi32(r, lo), hi), off);
        _mm512_mask_cvtepi32_storeu_epi8(q + k, mk, r);
    }
    *scale = amax / 127.0f;
    return 0;
}
#endif

static int quant_i8(const float *x, int64_t n, int8_t *q, float *scale, int offset, int path) {
#ifdef LC_X86
    if (path == PATH_AVX512_VNNI) return quant_i8_avx512(x, n, q, scale, offset);
#endif
    (void)path;
    return quant_i8_scalar(x, n, q, scale, offset);
}

/* ================================================================== int8 dynamic Linear */
typedef struct {
    const int8_t *wp;     /* packed [T][K4][16][4] */
    const int32_t *rowsum;/* [Np] */
    const float *sw;      /* [Np] */
    const float *bias;    /* [N] or NULL */
    int64_t N, K, K4, T;
} i8_weights;

static inline float i8_out(int32_t acc, float sx, float sw, const float *bias, int64_t n) {
    float t = sx * sw;
    float y = (float)acc * t;
    return bias ? y + bias[n] : y;
}

static void i8_rows_scalar(const i8_weights *w, const int8_t *xq, const float *sx, int64_t ldx,
                           int64_t m0, int64_t m1, int64_t t, float *y) {
    for (int64_t m = m0; m < m1; m++) {
        const int8_t *xr = xq + m * ldx;
        for (int j = 0; j < NT; j++) {
            int64_t n = t * NT + j;
            if (n >= w->N) break;
            int32_t acc = 0;
            const int8_t *wt = w->wp + t * w->K4 * 64 + j * 4;
            for (int64_t kq = 0; kq < w->K4; kq++)
                for (int i = 0; i < 4; i++) acc += (int32_t)xr[kq * 4 + i] * (int32_t)wt[kq * 64 + i];
            y[m * w->N + n] = i8_out(acc, sx[m], w->sw[n], w->bias, n);
        }
    }
}

#ifdef LC_X86
/* Shared epilogue for 16 channels held as int32 (already compensated). */
LC_TARGET_AVX512 static inline void i8_store16_512(__m512i acc, float sx, const i8_weights *w,
                                                   int64_t t, float *yrow) {
    int64_t n0 = t * NT;
    int64_t left = w->N - n0;
    __mmask16 mask = left >= NT ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    __m512 tt = _mm512_mul_ps(_mm512_set1_ps(sx), _mm512_loadu_ps(w->sw + n0));
    __m512 y = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), tt);
    if (w->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, w->bias + n0));
    _mm512_mask_storeu_ps(yrow + n0, mask, y);
}

/* AVX-512 VNNI: rows m0..m1 of x (as u8 = q + 128), tiles t0..t1 (at most TILE_CHUNK).
 * K is cut into slices of KC4 quads so the 4-tile weight slice (16 KiB) and the x slices stay
 * in L1 while every row of the chunk passes over them; int32 partial sums live in C between
 * slices (integer adds: the order cannot change the result).  Register block: 4 rows x 4
 * tiles = 16 accumulators; leftover rows one at a time. */
#define KC4 64
LC_TARGET_AVX512_VNNI static void i8_block_avx512_vnni(const i8_weights *w, const uint8_t *xu,
                                                      const float *sx, int64_t ldx, int64_t m0,
                                                      int64_t m1, int64_t t0, int64_t t1, float *y) {
    const int64_t K4 = w->K4, ts = K4 * 64;
    const int nt = (int)(t1 - t0);
    __m512i C[ROW_CHUNK][TILE_CHUNK];
    for (int64_t m = m0; m < m1; m++)
        for (int j = 0; j < TILE_CHUNK; j++) C[m - m0][j] = _mm512_setzero_si512();
    for (int64_t kb = 0; kb < K4; kb += KC4) {
        const int64_t ke = kb + KC4 < K4 ? kb + KC4 : K4;
        const int8_t *wb = w->wp + t0 * ts;
        int64_t m = m0;
        if (nt == 4) {
            for (; m + 4 <= m1; m += 4) {
                __m512i c[4][4];
                for (int r = 0; r < 4; r++)
                    for (int j = 0; j < 4; j++) c[r][j] = C[m - m0 + r][j];
                const uint8_t *x0 = xu + m * ldx;
                for (int64_t kq = kb; kq < ke; kq++) {
                    __m512i w0 = _mm512_loadu_si512(wb + kq * 64);
                    __m512i w1 = _mm512_loadu_si512(wb + ts + kq * 64);
                    __m512i w2 = _mm512_loadu_si512(wb + 2 * ts + kq * 64);
                    __m512i w3 = _mm512_loadu_si512(wb + 3 * ts + kq * 64);
                    for (int r = 0; r < 4; r++) {
                        __m512i xb = _mm512_set1_epi32(load_i32(x0 + r * ldx + kq * 4));
                        c[r][0] = _mm512_dpbusd_epi32(c[r][0], xb, w0);
                        c[r][1] = _mm512_dpbusd_epi32(c[r][1], xb, w1);
                        c[r][2] = _mm512_dpbusd_epi32(c[r][2], xb, w2);
                        c[r][3] = _mm512_dpbusd_epi32(c[r][3], xb, w3);
                    }
                }
                for (int r = 0; r < 4; r++)
                    for (int j = 0; j < 4; j++) C[m - m0 + r][j] = c[r][j];
            }
        }
        for (; m < m1; m++) {
            const uint8_t *x0 = xu + m * ldx;
            for (int j = 0; j < nt; j++) {
                __m512i c0 = C[m - m0][j];
                const int8_t *wj = wb + j * ts;
                for (int64_t kq = kb; kq < ke; kq++)
                    c0 = _mm512_dpbusd_epi32(c0, _mm512_set1_epi32(load_i32(x0 + kq * 4)),
                                             _mm512_loadu_si512(wj + kq * 64));
                C[m - m0][j] = c0;
            }
        }
    }
    for (int j = 0; j < nt; j++) {
        __m512i rs = _mm512_slli_epi32(_mm512_loadu_si512(w->rowsum + (t0 + j) * NT), 7);
        for (int64_t m = m0; m < m1; m++)
            i8_store16_512(_mm512_sub_epi32(C[m - m0][j], rs), sx[m], w, t0 + j, y + m * w->N);
    }
}

/* 8 channels of int32 -> output (AVX2 epilogue). */
LC_TARGET_AVX2 static inline void i8_store8_256(__m256i acc, float sx, const i8_weights *w,
                                                int64_t n0, float *yrow) {
    float tmp[8];
    __m256 tt = _mm256_mul_ps(_mm256_set1_ps(sx), _mm256_loadu_ps(w->sw + n0));
    __m256 y = _mm256_mul_ps(_mm256_cvtepi32_ps(acc), tt);
    int64_t left = w->N - n0;
    if (left >= 8) {
        if (w->bias) y = _mm256_add_ps(y, _mm256_loadu_ps(w->bias + n0));
        _mm256_storeu_ps(yrow + n0, y);
        return;
    }
    _mm256_storeu_ps(tmp, y);
    for (int64_t j = 0; j < left; j++) yrow[n0 + j] = w->bias ? tmp[j] + w->bias[n0 + j] : tmp[j];
}

/* AVX2: per 8 channels, bytes widened to int16 and multiplied pairwise with vpmaddwd (int16 x
 * int16 -> int32, exact), then pairs folded with vphaddd. */
LC_TARGET_AVX2 static void i8_block_avx2(const i8_weights *w, const int8_t *xq, const float *sx,
                                         int64_t ldx, int64_t m0, int64_t m1, int64_t t0,
                                         int64_t t1, float *y) {
    const int64_t K4 = w->K4, ts = K4 * 64;
    for (int64_t t = t0; t < t1; t++) {
        const int8_t *wb = w->wp + t * ts;
        for (int64_t m = m0; m < m1; m++) {
            const int8_t *xr = xq + m * ldx;
            __m256i a[4];
            for (int h = 0; h < 4; h++) a[h] = _mm256_setzero_si256();
            for (int64_t kq = 0; kq < K4; kq++) {
                /* x pattern [x0 x1 x2 x3] x 4 as int16 */
                __m256i xs = _mm256_cvtepi8_epi16(_mm_set1_epi32(load_i32(xr + kq * 4)));
                for (int h = 0; h < 4; h++) { /* 4 channels per 16 bytes */
                    __m128i wb16 = _mm_loadu_si128((const __m128i *)(wb + kq * 64 + h * 16));
                    a[h] = _mm256_add_epi32(a[h], _mm256_madd_epi16(_mm256_cvtepi8_epi16(wb16), xs));
                }
            }
            /* a[h] lanes: [c0p0 c0p1 c1p0 c1p1 | c2p0 c2p1 c3p0 c3p1] for channels 4h..4h+3 */
            for (int g = 0; g < 2; g++) {
                __m256i s = _mm256_hadd_epi32(a[2 * g], a[2 * g + 1]);
                s = _mm256_permute4x64_epi64(s, 0xD8);
                i8_store8_256(s, sx[m], w, t * NT + 8 * g, y + m * w->N);
            }
        }
    }
}
#endif

#ifdef LC_HAVE_AVX_VNNI
LC_TARGET_AVX_VNNI static void i8_block_avx_vnni(const i8_weights *w, const uint8_t *xu,
                                               const float *sx, int64_t ldx, int64_t m0,
                                               int64_t m1, int64_t t0, int64_t t1, float *y) {
    const int64_t K4 = w->K4, ts = K4 * 64;
    for (int64_t t = t0; t < t1; t++) {
        const int8_t *wb = w->wp + t * ts;
        __m256i rs0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(w->rowsum + t * NT)), 7);
        __m256i rs1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(w->rowsum + t * NT + 8)), 7);
        int64_t m = m0;
        for (; m + 2 <= m1; m += 2) {
            __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00;
            const uint8_t *x0 = xu + m * ldx, *x1 = x0 + ldx;
            for (int64_t kq = 0; kq < K4; kq++) {
                __m256i w0 = _mm256_loadu_si256((const __m256i *)(wb + kq * 64));
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(wb + kq * 64 + 32));
                __m256i xa = _mm256_set1_epi32(load_i32(x0 + kq * 4));
                __m256i xb = _mm256_set1_epi32(load_i32(x1 + kq * 4));
                c00 = _mm256_dpbusd_avx_epi32(c00, xa, w0);
                c01 = _mm256_dpbusd_avx_epi32(c01, xa, w1);
                c10 = _mm256_dpbusd_avx_epi32(c10, xb, w0);
                c11 = _mm256_dpbusd_avx_epi32(c11, xb, w1);
            }
            i8_store8_256(_mm256_sub_epi32(c00, rs0), sx[m], w, t * NT, y + m * w->N);
            i8_store8_256(_mm256_sub_epi32(c01, rs1), sx[m], w, t * NT + 8, y + m * w->N);
            i8_store8_256(_mm256_sub_epi32(c10, rs0), sx[m + 1], w, t * NT, y + (m + 1) * w->N);
            i8_store8_256(_mm256_sub_epi32(c11, rs1), sx[m + 1], w, t * NT + 8, y + (m + 1) * w->N);
        }
        for (; m < m1; m++) {
            __m256i c0 = _mm256_setzero_si256(), c1 = c0;
            const uint8_t *x0 = xu + m * ldx;
            for (int64_t kq = 0; kq < K4; kq++) {
                __m256i xa = _mm256_set1_epi32(load_i32(x0 + kq * 4));
                c0 = _mm256_dpbusd_avx_epi32(c0, xa, _mm256_loadu_si256((const __m256i *)(wb + kq * 64)));
                c1 = _mm256_dpbusd_avx_epi32(c1, xa, _mm256_loadu_si256((const __m256i *)(wb + kq * 64 + 32)));
            }
            i8_store8_256(_mm256_sub_epi32(c0, rs0), sx[m], w, t * NT, y + m * w->N);
            i8_store8_256(_mm256_sub_epi32(c1, rs1), sx[m], w, t * NT + 8, y + m * w->N);
        }
    }
}
#endif


static lc_status i8_linear(const i8_weights *w, const float *x, int64_t M, float *y, int path) {
    const int64_t K = w->K, ldx = w->K4 * 4;
    int offset = (path == PATH_AVX_VNNI || path == PATH_AVX512_VNNI) ? 128 : 0;
    int8_t *xq = malloc((size_t)(M * ldx > 0 ? M * ldx : 1));
    float *sx = malloc((size_t)(M > 0 ? M : 1) * sizeof(float));
    if (!xq || !sx) { free(xq); free(sx); return LC_ERR_NOMEM; }
    int bad = 0, nth = lc_threads_for(M * w->N * K);
    (void)nth; /* unused in a serial build */
    LC_OMP(parallel for num_threads(nth) schedule(static) reduction(|:bad))
    for (int64_t m = 0; m < M; m++) {
        int8_t *row = xq + m * ldx;
        if (quant_i8(x + m * K, K, row, &sx[m], offset, path) < 0) bad = 1;
        memset(row + K, offset ? 0x80 : 0, (size_t)(ldx - K));
    }
    if (bad) { free(xq); free(sx); return LC_ERR_NONFINITE; }
    int64_t nm = lc_nblocks(M, ROW_CHUNK), nt = lc_nblocks(w->T, TILE_CHUNK);
    LC_OMP(parallel for num_threads(nth) schedule(static))
    for (int64_t item = 0; item < nm * nt; item++) {
        int64_t mi = item % nm, ti = item / nm;
        int64_t m0 = mi * ROW_CHUNK, m1 = m0 + ROW_CHUNK < M ? m0 + ROW_CHUNK : M;
        int64_t t0 = ti * TILE_CHUNK, t1 = t0 + TILE_CHUNK < w->T ? t0 + TILE_CHUNK : w->T;
        switch (path) {
#ifdef LC_X86
        case PATH_AVX512_VNNI:
            i8_block_avx512_vnni(w, (const uint8_t *)xq, sx, ldx, m0, m1, t0, t1, y); break;
        case PATH_AVX2: i8_block_avx2(w, xq, sx, ldx, m0, m1, t0, t1, y); break;
#endif
#ifdef LC_HAVE_AVX_VNNI
        case PATH_AVX_VNNI:
            i8_block_avx_vnni(w, (const uint8_t *)xq, sx, ldx, m0, m1, t0, t1, y); break;
#endif
        default:
            for (int64_t t = t0; t < t1; t++) i8_rows_scalar(w, xq, sx, ldx, m0, m1, t, y);
        }
    }
    free(xq);
    free(sx);
    return LC_OK;
}

/* ================================================================== block-quantized Linear */
typedef struct {
    const uint8_t *wp;   /* packed codes */
    const float *s;      /* [T][G][16] */
    const int32_t *z;    /* [T][G][16], or one value for every group when zuni */
    int zuni;            /* symmetric codes (z = 8, 128 for Q8_0): no z stream to read */
    const float *m;      /* [T][G][16] or NULL */
    const float *bias;
    int64_t N, K, KB, T, G, gs; /* KB = 32-blocks along K (padded), G groups, gs group size */
    int bits;
} blk_weights;

/* Per row of x: xq [KB*32] int8, dx [KB], sxq [KB], X [G]. */
typedef struct {
    int8_t *xq;
    float *dx;
    int32_t *sxq;
    float *X;
} blk_act;

static int blk_quant_row(const float *x, int64_t K, int64_t KB, int64_t G, int64_t gs,
                         int8_t *xq, float *dx, int32_t *sxq, float *X, int path) {
    for (int64_t b = 0; b < KB; b++) {
        int64_t k0 = b * QBLK, n = K - k0 < QBLK ? K - k0 : QBLK;
        int8_t *q = xq + k0;
        if (n < QBLK) memset(q, 0, QBLK);
        if (n > 0 && quant_i8(x + k0, n, q, &dx[b], 0, path) < 0) return -1;
        if (n <= 0) dx[b] = 0.0f;
        int32_t s = 0;
        for (int i = 0; i < QBLK; i++) s += q[i];
        sxq[b] = s;
    }
    if (X) {
        for (int64_t g = 0; g < G; g++) {
            float acc = 0.0f;
            int64_t e = (g + 1) * gs < K ? (g + 1) * gs : K;
            for (int64_t k = g * gs; k < e; k++) acc = acc + x[k];
            X[g] = acc;
        }
    }
    return 0;
}

static inline int blk_code(const blk_weights *w, int64_t t, int64_t b, int j, int k) {
    /* code of channel lane j at position k (0..31) of 32-block b in tile t */
    if (w->bits == 4) {
        const uint8_t *p = w->wp + (t * w->KB + b) * 256;
        int lo = k < 16, kk = lo ? k : k - 16;
        uint8_t byte = p[(kk / 4) * 64 + j * 4 + (kk % 4)];
        return lo ? (byte & 15) : (byte >> 4);
    }
    const uint8_t *p = w->wp + (t * w->KB + b) * 512;
    return p[(k / 4) * 64 + j * 4 + (k % 4)];
}

static void blk_tile_scalar(const blk_weights *w, const blk_act *a, int64_t t, float *yrow) {
    const int64_t bpg = w->gs / QBLK;
    for (int j = 0; j < NT; j++) {
        int64_t n = t * NT + j;
        if (n >= w->N) break;
        float y = 0.0f;
        for (int64_t g = 0; g < w->G; g++) {
            int64_t pi = (t * w->G + g) * NT + j;
            float A = 0.0f;
            int64_t b1 = (g + 1) * bpg < w->KB ? (g + 1) * bpg : w->KB;
            for (int64_t b = g * bpg; b < b1; b++) {
                int32_t isum = 0;
                for (int k = 0; k < QBLK; k++) isum += blk_code(w, t, b, j, k) * a->xq[b * QBLK + k];
                isum -= w->z[w->zuni ? 0 : pi] * a->sxq[b];
                A = A + a->dx[b] * (float)isum;
            }
            y = y + w->s[pi] * A;
            if (w->m) y = y + w->m[pi] * a->X[g];
        }
        yrow[n] = w->bias ? y + w->bias[n] : y;
    }
}

#ifdef LC_X86
LC_TARGET_AVX512_VNNI static void blk_tile_avx512_vnni(const blk_weights *w, const blk_act *a,
                                                      int64_t t, float *yrow) {
    const int64_t bpg = w->gs / QBLK;
    const __m512i lo4 = _mm512_set1_epi8(15);
    __m512 y = _mm512_setzero_ps();
    for (int64_t g = 0; g < w->G; g++) {
        int64_t pi = (t * w->G + g) * NT;
        __m512i z = w->zuni ? _mm512_set1_epi32(w->z[0]) : _mm512_loadu_si512(w->z + pi);
        __m512 A = _mm512_setzero_ps();
        int64_t b1 = (g + 1) * bpg < w->KB ? (g + 1) * bpg : w->KB;
        for (int64_t b = g * bpg; b < b1; b++) {
            const int8_t *xb = a->xq + b * QBLK;
            __m512i acc = _mm512_setzero_si512();
            if (w->bits == 4) {
                const uint8_t *p = w->wp + (t * w->KB + b) * 256;
                /* One core keeps few lines in flight on its own; asking PF_DIST bytes ahead
                 * lets a GEMV stream weights near the memory bandwidth. */
                _mm_prefetch((const char *)(p + PF_DIST), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + PF_DIST + 64), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + PF_DIST + 128), _MM_HINT_T0);
                _mm_prefetch((const char *)(p + PF_DIST + 192), _MM_HINT_T0);
                for (int c = 0; c < 4; c++) {
                    __m512i v = _mm512_loadu_si512(p + c * 64);
                    __m512i lo = _mm512_and_si512(v, lo4);
                    __m512i hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
                    acc = _mm512_dpbusd_epi32(acc, lo, _mm512_set1_epi32(load_i32(xb + 4 * c)));
                    acc = _mm512_dpbusd_epi32(acc, hi, _mm512_set1_epi32(load_i32(xb + 16 + 4 * c)));
                }
            } else {
                const uint8_t *p = w->wp + (t * w->KB + b) * 512;
                for (int c = 0; c < 8; c++) _mm_prefetch((const char *)(p + PF_DIST + 64 * c), _MM_HINT_T0);
                for (int c = 0; c < 8; c++)
                    acc = _mm512_dpbusd_epi32(acc, _mm512_loadu_si512(p + c * 64),
                                              _mm512_set1_epi32(load_i32(xb + 4 * c)));
            }
            acc = _mm512_sub_epi32(acc, _mm512_mullo_epi32(z, _mm512_set1_epi32(a->sxq[b])));
            A = _mm512_add_ps(A, _mm512_mul_ps(_mm512_set1_ps(a->dx[b]), _mm512_cvtepi32_ps(acc)));
        }
        y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_loadu_ps(w->s + pi), A));
        if (w->m) y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_loadu_ps(w->m + pi), _mm512_set1_ps(a->X[g])));
    }
    int64_t n0 = t * NT, left = w->N - n0;
    __mmask16 mask = left >= NT ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    if (w->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, w->bias + n0));
    _mm512_mask_storeu_ps(yrow + n0, mask, y);
}

/* AVX2: for 4-bit codes vpmaddubsw (u8 x s8 -> s16 pairs) cannot saturate (15*127*2 < 32767),
 * then vpmaddwd with ones sums the pairs.  8-bit codes are widened to int16 (vpmaddwd). */
LC_TARGET_AVX2 static void blk_tile_avx2(const blk_weights *w, const blk_act *a, int64_t t,
                                         float *yrow) {
    const int64_t bpg = w->gs / QBLK;
    const __m256i lo4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 y0 = _mm256_setzero_ps(), y1 = y0;
    for (int64_t g = 0; g < w->G; g++) {
        int64_t pi = (t * w->G + g) * NT;
        __m256i z0 = w->zuni ? _mm256_set1_epi32(w->z[0]) : _mm256_loadu_si256((const __m256i *)(w->z + pi));
        __m256i z1 = w->zuni ? z0 : _mm256_loadu_si256((const __m256i *)(w->z + pi + 8));
        __m256 A0 = _mm256_setzero_ps(), A1 = A0;
        int64_t b1 = (g + 1) * bpg < w->KB ? (g + 1) * bpg : w->KB;
        for (int64_t b = g * bpg; b < b1; b++) {
            const int8_t *xb = a->xq + b * QBLK;
            __m256i c0 = _mm256_setzero_si256(), c1 = c0;
            if (w->bits == 4) {
                const uint8_t *p = w->wp + (t * w->KB + b) * 256;
                for (int c = 0; c < 4; c++) _mm_prefetch((const char *)(p + PF_DIST + 64 * c), _MM_HINT_T0);
                for (int c = 0; c < 4; c++) {
                    __m256i xl = _mm256_set1_epi32(load_i32(xb + 4 * c));
                    __m256i xh = _mm256_set1_epi32(load_i32(xb + 16 + 4 * c));
                    for (int h = 0; h < 2; h++) {
                        __m256i v = _mm256_loadu_si256((const __m256i *)(p + c * 64 + 32 * h));
                        __m256i lo = _mm256_and_si256(v, lo4);
                        __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                        __m256i s = _mm256_add_epi32(
                            _mm256_madd_epi16(_mm256_maddubs_epi16(lo, xl), ones),
                            _mm256_madd_epi16(_mm256_maddubs_epi16(hi, xh), ones));
                        if (h) c1 = _mm256_add_epi32(c1, s); else c0 = _mm256_add_epi32(c0, s);
                    }
                }
            } else {
                const uint8_t *p = w->wp + (t * w->KB + b) * 512;
                for (int c = 0; c < 8; c++) _mm_prefetch((const char *)(p + PF_DIST + 64 * c), _MM_HINT_T0);
                for (int c = 0; c < 8; c++) {
                    __m256i xs = _mm256_cvtepi8_epi16(_mm_set1_epi32(load_i32(xb + 4 * c)));
                    __m256i part[4];
                    for (int h = 0; h < 4; h++)
                        part[h] = _mm256_madd_epi16(
                            _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(p + c * 64 + 16 * h))), xs);
                    c0 = _mm256_add_epi32(c0, _mm256_permute4x64_epi64(_mm256_hadd_epi32(part[0], part[1]), 0xD8));
                    c1 = _mm256_add_epi32(c1, _mm256_permute4x64_epi64(_mm256_hadd_epi32(part[2], part[3]), 0xD8));
                }
            }
            __m256i sx = _mm256_set1_epi32(a->sxq[b]);
            c0 = _mm256_sub_epi32(c0, _mm256_mullo_epi32(z0, sx));
            c1 = _mm256_sub_epi32(c1, _mm256_mullo_epi32(z1, sx));
            __m256 d = _mm256_set1_ps(a->dx[b]);
            A0 = _mm256_add_ps(A0, _mm256_mul_ps(d, _mm256_cvtepi32_ps(c0)));
            A1 = _mm256_add_ps(A1, _mm256_mul_ps(d, _mm256_cvtepi32_ps(c1)));
        }
        y0 = _mm256_add_ps(y0, _mm256_mul_ps(_mm256_loadu_ps(w->s + pi), A0));
        y1 = _mm256_add_ps(y1, _mm256_mul_ps(_mm256_loadu_ps(w->s + pi + 8), A1));
        if (w->m) {
            __m256 X = _mm256_set1_ps(a->X[g]);
            y0 = _mm256_add_ps(y0, _mm256_mul_ps(_mm256_loadu_ps(w->m + pi), X));
            y1 = _mm256_add_ps(y1, _mm256_mul_ps(_mm256_loadu_ps(w->m + pi + 8), X));
        }
    }
    float tmp[NT];
    _mm256_storeu_ps(tmp, y0);
    _mm256_storeu_ps(tmp + 8, y1);
    for (int j = 0; j < NT; j++) {
        int64_t n = t * NT + j;
        if (n >= w->N) break;
        yrow[n] = w->bias ? tmp[j] + w->bias[n] : tmp[j];
    }
}
#endif

static lc_status blk_linear(const blk_weights *w, const float *x, int64_t M, float *y, int path) {
    const int64_t KB = w->KB, G = w->G;
    int8_t *xq = malloc((size_t)(M * KB * QBLK > 0 ? M * KB * QBLK : 1));
    float *dx = malloc((size_t)(M * KB > 0 ? M * KB : 1) * sizeof(float));
    int32_t *sxq = malloc((size_t)(M * KB > 0 ? M * KB : 1) * sizeof(int32_t));
    float *X = w->m ? malloc((size_t)(M * G > 0 ? M * G : 1) * sizeof(float)) : NULL;
    if (!xq || !dx || !sxq || (w->m && !X)) {
        free(xq); free(dx); free(sxq); free(X);
        return LC_ERR_NOMEM;
    }
    int bad = 0, nth = lc_threads_for(M * w->N * w->K);
    (void)nth; /* unused in a serial build */
    LC_OMP(parallel for num_threads(nth) schedule(static) reduction(|:bad))
    for (int64_t m = 0; m < M; m++)
        if (blk_quant_row(x + m * w->K, w->K, KB, G, w->gs, xq + m * KB * QBLK, dx + m * KB,
                          sxq + m * KB, X ? X + m * G : NULL, path) < 0)
            bad = 1;
    if (bad) { free(xq); free(dx); free(sxq); free(X); return LC_ERR_NONFINITE; }
    LC_OMP(parallel for num_threads(nth) schedule(static))
    for (int64_t t = 0; t < w->T; t++) {
        for (int64_t m = 0; m < M; m++) {
            blk_act a = {xq + m * KB * QBLK, dx + m * KB, sxq + m * KB, X ? X + m * G : NULL};
            float *yrow = y + m * w->N;
            switch (path) {
#ifdef LC_X86
            case PATH_AVX512_VNNI: blk_tile_avx512_vnni(w, &a, t, yrow); break;
            case PATH_AVX_VNNI: /* no 256-bit VNNI variant here: the AVX2 path is as fast */
            case PATH_AVX2: blk_tile_avx2(w, &a, t, yrow); break;
#endif
            default: blk_tile_scalar(w, &a, t, yrow);
            }
        }
    }
    free(xq); free(dx); free(sxq); free(X);
    return LC_OK;
}

/* ================================================================== NF4 (float activations) */
typedef struct {
    const uint8_t *wp;    /* [T][K][8] */
    const float *absmax;  /* [T][NB][16] */
    const float *table;   /* [16] */
    const float *bias;
    int64_t N, K, T, NB, bs;
} nf4_weights;

static void nf4_tile_scalar(const nf4_weights *w, const float *x, int64_t t, float *yrow) {
    for (int j = 0; j < NT; j++) {
        int64_t n = t * NT + j;
        if (n >= w->N) break;
        float y = 0.0f;
        for (int64_t b = 0; b < w->NB; b++) {
            float acc = 0.0f;
            int64_t e = (b + 1) * w->bs < w->K ? (b + 1) * w->bs : w->K;
            for (int64_t k = b * w->bs; k < e; k++) {
                uint8_t byte = w->wp[(t * w->K + k) * 8 + j / 2];
                int q = (j & 1) ? byte >> 4 : byte & 15;
                acc = acc + w->table[q] * x[k];
            }
            y = y + w->absmax[(t * w->NB + b) * NT + j] * acc;
        }
        yrow[n] = w->bias ? y + w->bias[n] : y;
    }
}

#ifdef LC_X86
LC_TARGET_AVX512 static void nf4_tile_avx512(const nf4_weights *w, const float *x, int64_t t,
                                             float *yrow) {
    const __m512 lut = _mm512_loadu_ps(w->table);
    const __m512i sh = _mm512_set_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0);
    const __m512i m15 = _mm512_set1_epi32(15);
    __m512 y = _mm512_setzero_ps();
    for (int64_t b = 0; b < w->NB; b++) {
        __m512 acc = _mm512_setzero_ps();
        int64_t e = (b + 1) * w->bs < w->K ? (b + 1) * w->bs : w->K;
        for (int64_t k = b * w->bs; k < e; k++) {
            /* 8 bytes -> 16 lanes: lane j takes byte j/2, shifted by 4*(j&1) */
            __m128i bytes = _mm_loadl_epi64((const __m128i *)(w->wp + (t * w->K + k) * 8));
            __m512i v = _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(bytes, bytes));
            __m512i q = _mm512_and_si512(_mm512_srlv_epi32(v, sh), m15);
            __m512 wv = _mm512_permutexvar_ps(q, lut);
            acc = _mm512_add_ps(acc, _mm512_mul_ps(wv, _mm512_set1_ps(x[k])));
        }
        y = _mm512_add_ps(y, _mm512_mul_ps(_mm512_loadu_ps(w->absmax + (t * w->NB + b) * NT), acc));
    }
    int64_t n0 = t * NT, left = w->N - n0;
    __mmask16 mask = left >= NT ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    if (w->bias) y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(mask, w->bias + n0));
    _mm512_mask_storeu_ps(yrow + n0, mask, y);
}
#endif

static lc_status nf4_linear(const nf4_weights *w, const float *x, int64_t M, float *y, int path) {
    int bad = 0, nth = lc_threads_for(M * w->N * w->K);
    (void)nth; /* unused in a serial build */
    LC_OMP(parallel for num_threads(nth) schedule(static) reduction(|:bad))
    for (int64_t i = 0; i < M * w->K; i++)
        if (!(fabsf(x[i]) <= FLT_MAX)) bad = 1;
    if (bad) return LC_ERR_NONFINITE;
    LC_OMP(parallel for num_threads(nth) schedule(static))
    for (int64_t t = 0; t < w->T; t++)
        for (int64_t m = 0; m < M; m++) {
#ifdef LC_X86
            if (path != PATH_SCALAR && lc_simd() >= LC_SIMD_AVX512) {
                nf4_tile_avx512(w, x + m * w->K, t, y + m * w->N);
                continue;
            }
#endif
            nf4_tile_scalar(w, x + m * w->K, t, y + m * w->N);
        }
    return LC_OK;
}

/* ================================================================== packing */
typedef struct {
    const uint8_t *data;
    int kind, bits;    /* SRC_*, and bits per code of a stream */
    int64_t row_codes; /* codes per source row (>= K: a padded source row is read up to K) */
} wsrc;

/* GGUF blocks: bytes per block and where the codes start. */
static void gguf_block(int kind, int64_t *bytes, int64_t *qs) {
    switch (kind) {
    case SRC_Q4_0: *bytes = sizeof(block_q4_0); *qs = offsetof(block_q4_0, qs); break;
    case SRC_Q4_1: *bytes = sizeof(block_q4_1); *qs = offsetof(block_q4_1, qs); break;
    default: *bytes = sizeof(block_q8_0); *qs = offsetof(block_q8_0, qs); break;
    }
}

/* Bytes a source of N rows of row_codes codes holds; -1 when row_codes does not fit it. */
static int64_t src_bytes(const wsrc *s, int64_t N) {
    int64_t bytes, qs;
    switch (s->kind) {
    case SRC_STREAM: return N * ((s->row_codes * s->bits + 7) / 8);
    case SRC_BITSANDBYTES: return (N * s->row_codes + 1) / 2; /* one flat stream */
    default:
        if (s->row_codes % QK) return -1;
        gguf_block(s->kind, &bytes, &qs);
        return N * (s->row_codes / QK) * bytes;
    }
}

/* The first K codes of row n into out[K]. */
static void src_row(const wsrc *s, int64_t n, int64_t K, uint8_t *out) {
    switch (s->kind) {
    case SRC_STREAM: {
        const uint8_t *row = s->data + n * ((s->row_codes * s->bits + 7) / 8);
        if (s->bits == 8) memcpy(out, row, (size_t)K);
        else lc_unpack_row(row, K, s->bits, out);
        break;
    }
    case SRC_BITSANDBYTES:
        for (int64_t k = 0, i = n * s->row_codes; k < K; k++, i++)
            out[k] = (i & 1) ? s->data[i >> 1] & 15 : s->data[i >> 1] >> 4;
        break;
    default: {
        int64_t bytes, qs;
        gguf_block(s->kind, &bytes, &qs);
        const uint8_t *row = s->data + n * (s->row_codes / QK) * bytes;
        for (int64_t b = 0; b * QK < K; b++) {
            const uint8_t *q = row + b * bytes + qs;
            uint8_t *o = out + b * QK;
            if (s->kind == SRC_Q8_0) {
                for (int j = 0; j < QK; j++) o[j] = (uint8_t)(q[j] ^ 0x80); /* int8 + 128 */
            } else {
                for (int j = 0; j < QK / 2; j++) { o[j] = q[j] & 15; o[j + QK / 2] = q[j] >> 4; }
            }
        }
    }
    }
}

static int64_t layout_bytes(int layout, int64_t N, int64_t K) {
    int64_t T = (N + NT - 1) / NT;
    switch (layout) {
    case LAYOUT_I8: return T * ((K + 3) / 4) * 64;
    case LAYOUT_BLK4: return T * ((K + QBLK - 1) / QBLK) * 256;
    case LAYOUT_BLK8: return T * ((K + QBLK - 1) / QBLK) * 512;
    default: return T * K * 8;
    }
}

/* Where code k of lane j goes in its tile, and how far to shift it. */
static inline int64_t tile_pos(int layout, int j, int64_t k, int *shift) {
    int64_t b = k / QBLK;
    int kk = (int)(k % QBLK);
    *shift = 0;
    switch (layout) {
    case LAYOUT_I8: return (k / 4) * 64 + j * 4 + (k % 4);
    case LAYOUT_BLK4:
        if (kk >= 16) { kk -= 16; *shift = 4; }
        return b * 256 + (kk / 4) * 64 + j * 4 + (kk % 4);
    case LAYOUT_BLK8: return b * 512 + (kk / 4) * 64 + j * 4 + (kk % 4);
    default: *shift = 4 * (j & 1); return k * 8 + j / 2; /* nf4 */
    }
}

/* One tile: lanes j of tile t from `s` into dst.  Called with a constant layout, so the
 * compiler folds tile_pos for each layout. */
static inline __attribute__((always_inline)) int pack_tile(int layout, const wsrc *s,
                                                           int is_signed, int64_t N, int64_t K,
                                                           int64_t t, uint8_t *dst, uint8_t *row,
                                                           int32_t *rowsum) {
    const unsigned limit = (layout == LAYOUT_BLK4 || layout == LAYOUT_NF4) ? 16 : 256;
    int range = 0;
    for (int j = 0; j < NT; j++) {
        int64_t n = t * NT + j;
        int32_t sum = 0;
        if (n < N) {
            src_row(s, n, K, row);
            for (int64_t k = 0; k < K; k++) {
                int shift;
                int64_t at = tile_pos(layout, j, k, &shift);
                if (layout == LAYOUT_I8) {
                    int8_t v = (int8_t)(is_signed ? row[k] : row[k] ^ 0x80);
                    dst[at] = (uint8_t)v;
                    sum += v;
                } else {
                    range |= row[k] >= limit;
                    dst[at] = (uint8_t)(dst[at] | (row[k] % limit) << shift);
                }
            }
        }
        if (rowsum) rowsum[t * NT + j] = sum;
    }
    return range;
}

/* Packs N rows of K codes from `s` into `layout`.  The i8 layout stores int8 weights: a
 * signed source (int8 values) as it is, an unsigned one (uint8 codes with zero point 128) as
 * code - 128; it also writes rowsum[T * 16] (0 on padding lanes) for the VNNI compensation.
 * The other layouts take codes below 2^4 (blk4, nf4) or 2^8 (blk8); LC_ERR_RANGE otherwise. */
static lc_status pack(int layout, const wsrc *s, int is_signed, int64_t N, int64_t K,
                      uint8_t *wp, int32_t *rowsum) {
    const int64_t T = (N + NT - 1) / NT, tb = layout_bytes(layout, NT, K);
    int nomem = 0, range = 0;
    LC_OMP(parallel for num_threads(lc_threads_for(N * K)) schedule(static) reduction(|:nomem, range))
    for (int64_t t = 0; t < T; t++) {
        uint8_t *dst = wp + t * tb, *row = malloc((size_t)K);
        memset(dst, 0, (size_t)tb);
        if (!row) { nomem = 1; continue; }
        switch (layout) {
        case LAYOUT_I8: range |= pack_tile(LAYOUT_I8, s, is_signed, N, K, t, dst, row, rowsum); break;
        case LAYOUT_BLK4: range |= pack_tile(LAYOUT_BLK4, s, is_signed, N, K, t, dst, row, NULL); break;
        case LAYOUT_BLK8: range |= pack_tile(LAYOUT_BLK8, s, is_signed, N, K, t, dst, row, NULL); break;
        default: range |= pack_tile(LAYOUT_NF4, s, is_signed, N, K, t, dst, row, NULL); break;
        }
        free(row);
    }
    return nomem ? LC_ERR_NOMEM : range ? LC_ERR_RANGE : LC_OK;
}

/* The inverse of pack: codes [N, K] (int8 weights for i8). */
static void unpack(int layout, const uint8_t *wp, int64_t N, int64_t K, uint8_t *out) {
    const int64_t tb = layout_bytes(layout, NT, K);
    const unsigned mask = (layout == LAYOUT_BLK4 || layout == LAYOUT_NF4) ? 15 : 255;
    LC_OMP(parallel for num_threads(lc_threads_for(N * K)) schedule(static))
    for (int64_t n = 0; n < N; n++) {
        const uint8_t *src = wp + (n / NT) * tb;
        for (int64_t k = 0; k < K; k++) {
            int shift;
            int64_t at = tile_pos(layout, (int)(n % NT), k, &shift);
            out[n * K + k] = (uint8_t)((src[at] >> shift) & mask);
        }
    }
}

/* [N, G] per-channel parameters (4-byte items) -> [T][G][16], padding lanes zero. */
static void tile_params(const uint32_t *a, int64_t N, int64_t G, uint32_t *out) {
    const int64_t T = (N + NT - 1) / NT;
    for (int64_t t = 0; t < T; t++)
        for (int64_t g = 0; g < G; g++)
            for (int j = 0; j < NT; j++) {
                int64_t n = t * NT + j;
                out[(t * G + g) * NT + j] = n < N ? a[n * G + g] : 0u;
            }
}

/* GGUF block scales (and Q4_1's mins) as float32 [N, K / 32]. */
static void gguf_params(const wsrc *s, int64_t N, int64_t K, float *d, float *m) {
    int64_t bytes, qs, G = K / QK, per_row = s->row_codes / QK;
    gguf_block(s->kind, &bytes, &qs);
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < G; g++) {
            const uint8_t *blk = s->data + (n * per_row + g) * bytes;
            uint16_t h;
            memcpy(&h, blk, 2); /* d is the first field of every block */
            d[n * G + g] = lc_f16_to_f32(h);
            if (m) { memcpy(&h, blk + offsetof(block_q4_1, m), 2); m[n * G + g] = lc_f16_to_f32(h); }
        }
}

/* ================================================================== Python entry points */

static int want_path(int path) {
    if (path == PATH_AUTO) return auto_path();
    if (!path_available(path)) {
        if (path < 0 || path >= NPATHS)
            PyErr_Format(lc_ArgumentError, "path: unknown path code %d", path);
        else
            PyErr_Format(lc_ArgumentError, "path: %s is not available on this CPU", path_names[path]);
        return -2;
    }
    return path;
}

/* The part every Linear entry point checks alike: N and K in range, x and out float32 with
 * x holding M whole rows of K and out M x N, and an optional float32 bias of N. */
static int linear_io(PyArrayObject *x, PyArrayObject *out, PyObject *bias, long long N,
                     long long K, long long max_k, int64_t *M, const float **bias_p) {
    if (K < 1 || K > max_k || N < 1) {
        PyErr_Format(lc_ShapeError, "weight: in_features must be in [1, %lld] and out_features "
                     ">= 1 (got %lld, %lld)", max_k, K, N);
        return -1;
    }
    if (lc_check_array(x, "x", LC_F32, 0) < 0 || lc_check_array(out, "out", LC_F32, 1) < 0)
        return -1;
    if (PyArray_SIZE(x) % K) {
        PyErr_SetString(lc_ShapeError, "x: size is not a multiple of in_features");
        return -1;
    }
    *M = PyArray_SIZE(x) / K;
    PyArrayObject *b;
    if (lc_check_size(out, "out", *M * N) < 0 ||
        lc_arg_optional_array(bias, "bias", LC_F32, 0, &b) < 0 || lc_check_size(b, "bias", N) < 0)
        return -1;
    *bias_p = b ? PyArray_DATA(b) : NULL;
    return 0;
}

static PyObject *py_i8_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "packed", "rowsum", "scales", "bias", "out", "N", "K", "path", NULL};
    PyArrayObject *x, *wp, *rowsum, *sw, *out;
    PyObject *bias;
    long long N, K;
    int path = PATH_AUTO;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!OO!LL|i", kwlist, &PyArray_Type, &x,
                                     &PyArray_Type, &wp, &PyArray_Type, &rowsum, &PyArray_Type,
                                     &sw, &bias, &PyArray_Type, &out, &N, &K, &path))
        return NULL;
    int64_t M;
    const float *b;
    if ((path = want_path(path)) < 0 || linear_io(x, out, bias, N, K, MAX_K, &M, &b) < 0)
        return NULL;
    if (lc_check_array(wp, "packed", LC_I8, 0) < 0 || lc_check_array(rowsum, "rowsum", LC_I32, 0) < 0 ||
        lc_check_array(sw, "scales", LC_F32, 0) < 0)
        return NULL;
    int64_t T = (N + NT - 1) / NT, K4 = (K + 3) / 4;
    if (lc_check_size(wp, "packed", layout_bytes(LAYOUT_I8, N, K)) < 0 ||
        lc_check_size(rowsum, "rowsum", T * NT) < 0 || lc_check_size(sw, "scales", T * NT) < 0)
        return NULL;
    i8_weights w = {PyArray_DATA(wp), PyArray_DATA(rowsum), PyArray_DATA(sw), b, N, K, K4, T};
    const float *xp = PyArray_DATA(x);
    float *yp = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = i8_linear(&w, xp, M, yp, path);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_blk_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "packed", "s", "z", "m", "bias", "out", "N", "K", "group_size",
                             "bits", "path", NULL};
    PyArrayObject *x, *wp, *s, *z, *out;
    PyObject *m, *bias;
    long long N, K, gs;
    int bits, path = PATH_AUTO;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!OOO!LLLi|i", kwlist, &PyArray_Type, &x,
                                     &PyArray_Type, &wp, &PyArray_Type, &s, &PyArray_Type, &z, &m,
                                     &bias, &PyArray_Type, &out, &N, &K, &gs, &bits, &path))
        return NULL;
    int64_t M;
    const float *bp;
    if ((path = want_path(path)) < 0 || linear_io(x, out, bias, N, K, MAX_K, &M, &bp) < 0)
        return NULL;
    if (bits != 4 && bits != 8) { PyErr_SetString(lc_ArgumentError, "bits: must be 4 or 8"); return NULL; }
    if (gs < QBLK || gs % QBLK) {
        PyErr_Format(lc_ArgumentError, "group_size: must be a positive multiple of 32, got %lld", gs);
        return NULL;
    }
    if (lc_check_array(wp, "packed", LC_U8, 0) < 0 || lc_check_array(s, "scales", LC_F32, 0) < 0 ||
        lc_check_array(z, "zeros", LC_I32, 0) < 0)
        return NULL;
    int64_t KB = (K + QBLK - 1) / QBLK, T = (N + NT - 1) / NT, G = (K + gs - 1) / gs;
    PyArrayObject *m_a;
    if (lc_check_size(wp, "packed", layout_bytes(bits == 4 ? LAYOUT_BLK4 : LAYOUT_BLK8, N, K)) < 0 ||
        lc_check_size(s, "scales", T * G * NT) < 0 ||
        (PyArray_SIZE(z) != 1 && lc_check_size(z, "zeros", T * G * NT) < 0) ||
        lc_arg_optional_array(m, "offsets", LC_F32, 0, &m_a) < 0 ||
        lc_check_size(m_a, "offsets", T * G * NT) < 0)
        return NULL;
    const float *mp = m_a ? PyArray_DATA(m_a) : NULL;
    blk_weights w = {PyArray_DATA(wp), PyArray_DATA(s), PyArray_DATA(z), PyArray_SIZE(z) == 1,
                     mp, bp, N, K, KB, T, G, gs, bits};
    const float *xp = PyArray_DATA(x);
    float *yp = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = blk_linear(&w, xp, M, yp, path);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

static PyObject *py_nf4_linear(PyObject *self, PyObject *args, PyObject *kw) {
    (void)self;
    static char *kwlist[] = {"x", "packed", "absmax", "table", "bias", "out", "N", "K",
                             "block_size", "path", NULL};
    PyArrayObject *x, *wp, *absmax, *table, *out;
    PyObject *bias;
    long long N, K, bs;
    int path = PATH_AUTO;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O!O!O!O!OO!LLL|i", kwlist, &PyArray_Type, &x,
                                     &PyArray_Type, &wp, &PyArray_Type, &absmax, &PyArray_Type,
                                     &table, &bias, &PyArray_Type, &out, &N, &K, &bs, &path))
        return NULL;
    int64_t M;
    const float *bp;
    /* float accumulation: no K limit beyond int64 */
    if ((path = want_path(path)) < 0 || linear_io(x, out, bias, N, K, INT64_MAX, &M, &bp) < 0)
        return NULL;
    if (bs < 1) { PyErr_SetString(lc_ArgumentError, "block_size: must be >= 1"); return NULL; }
    if (lc_check_array(wp, "packed", LC_U8, 0) < 0 || lc_check_array(absmax, "absmax", LC_F32, 0) < 0 ||
        lc_check_array(table, "table", LC_F32, 0) < 0)
        return NULL;
    int64_t T = (N + NT - 1) / NT, NB = (K + bs - 1) / bs;
    if (lc_check_size(wp, "packed", layout_bytes(LAYOUT_NF4, N, K)) < 0 ||
        lc_check_size(absmax, "absmax", T * NB * NT) < 0 ||
        lc_check_size(table, "table", 16) < 0)
        return NULL;
    nf4_weights w = {PyArray_DATA(wp), PyArray_DATA(absmax), PyArray_DATA(table), bp, N, K, T, NB, bs};
    const float *xp = PyArray_DATA(x);
    float *yp = PyArray_DATA(out);
    lc_status st;
    LC_NOGIL_BEGIN
    st = nf4_linear(&w, xp, M, yp, path);
    LC_NOGIL_END
    if (st != LC_OK) return lc_raise_status(st, "x");
    Py_RETURN_NONE;
}

/* A source from (data, source, row_codes, bits), its size checked against N rows. */
static int parse_source(PyArrayObject *data, int kind, long long N, long long K,
                        long long row_codes, int bits, wsrc *s, int *is_signed) {
    if (kind < 0 || kind >= NSOURCES) {
        PyErr_Format(lc_ArgumentError, "source: unknown source code %d", kind);
        return -1;
    }
    if (kind == SRC_STREAM ? bits < 1 || bits > 8 : bits != (kind == SRC_Q8_0 ? 8 : 4)) {
        PyErr_Format(lc_ArgumentError, "bits: %d does not fit this source", bits);
        return -1;
    }
    *is_signed = PyArray_TYPE(data) == NPY_INT8;
    if (lc_check_array(data, "data", *is_signed ? LC_I8 : LC_U8, 0) < 0) return -1;
    if (N < 1 || K < 1 || row_codes < K) {
        PyErr_Format(lc_ShapeError, "data: %lld rows of %lld codes cannot hold %lld columns",
                     N, row_codes, K);
        return -1;
    }
    if (kind != SRC_STREAM && kind != SRC_BITSANDBYTES && K % QK) {
        PyErr_Format(lc_ShapeError, "data: GGUF blocks hold whole blocks of %d columns, not %lld",
                     QK, K);
        return -1;
    }
    *s = (wsrc){PyArray_DATA(data), kind, bits, row_codes};
    int64_t want = src_bytes(s, N);
    if (want < 0 || PyArray_SIZE(data) != want) {
        PyErr_Format(lc_FormatError, "data: %lld rows of %lld codes need %lld bytes, got %lld",
                     N, row_codes, (long long)want, (long long)PyArray_SIZE(data));
        return -1;
    }
    return 0;
}

static int parse_layout(int layout, long long N, long long K) {
    if (layout < 0 || layout >= NLAYOUTS) {
        PyErr_Format(lc_ArgumentError, "layout: unknown layout code %d", layout);
        return -1;
    }
    long long max_k = layout == LAYOUT_NF4 ? INT64_MAX : MAX_K;
    if (N < 1 || K < 1 || K > max_k) {
        PyErr_Format(lc_ShapeError, "weight: shape (%lld, %lld) not supported (1 <= in_features "
                     "<= %lld)", N, K, max_k);
        return -1;
    }
    return 0;
}

static PyArrayObject *new_array(int64_t n, int typenum) {
    npy_intp dims[1] = {(npy_intp)n};
    return (PyArrayObject *)PyArray_SimpleNew(1, dims, typenum);
}

/* matmul_pack(layout, data, source, N, K, row_codes, bits) -> packed (and rowsum for i8). */
static PyObject *py_pack(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *data;
    int layout, kind, bits;
    long long N, K, row_codes;
    if (!PyArg_ParseTuple(args, "iO!iLLLi", &layout, &PyArray_Type, &data, &kind, &N, &K,
                          &row_codes, &bits))
        return NULL;
    wsrc s;
    int is_signed;
    if (parse_layout(layout, N, K) < 0 ||
        parse_source(data, kind, N, K, row_codes, bits, &s, &is_signed) < 0)
        return NULL;
    if (is_signed && layout != LAYOUT_I8) {
        PyErr_SetString(lc_DTypeError, "data: int8 values go to the i8 layout only");
        return NULL;
    }
    if (layout == LAYOUT_I8 && (kind != SRC_STREAM || bits != 8)) {
        PyErr_SetString(lc_ArgumentError, "source: the i8 layout takes one byte per weight");
        return NULL;
    }
    int64_t T = (N + NT - 1) / NT;
    PyArrayObject *wp = new_array(layout_bytes(layout, N, K), layout == LAYOUT_I8 ? NPY_INT8 : NPY_UINT8);
    PyArrayObject *rs = layout == LAYOUT_I8 ? new_array(T * NT, NPY_INT32) : NULL;
    if (!wp || (layout == LAYOUT_I8 && !rs)) { Py_XDECREF(wp); Py_XDECREF(rs); return NULL; }
    uint8_t *wpp = PyArray_DATA(wp);
    int32_t *rsp = rs ? PyArray_DATA(rs) : NULL;
    lc_status st;
    LC_NOGIL_BEGIN
    st = pack(layout, &s, is_signed, N, K, wpp, rsp);
    LC_NOGIL_END
    if (st != LC_OK) {
        Py_DECREF(wp); Py_XDECREF(rs);
        if (st == LC_ERR_RANGE)
            return PyErr_Format(lc_ArgumentError, "codes: %d-bit codes must be in [0, %d]",
                                layout == LAYOUT_BLK8 ? 8 : 4, layout == LAYOUT_BLK8 ? 255 : 15);
        return lc_raise_status(st, "data");
    }
    if (!rs) return (PyObject *)wp;
    return Py_BuildValue("(NN)", wp, rs);
}

/* matmul_unpack(layout, packed, N, K) -> codes [N, K] (uint8; int8 weights for i8). */
static PyObject *py_unpack(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *wp;
    int layout;
    long long N, K;
    if (!PyArg_ParseTuple(args, "iO!LL", &layout, &PyArray_Type, &wp, &N, &K)) return NULL;
    if (parse_layout(layout, N, K) < 0 ||
        lc_check_array(wp, "packed", layout == LAYOUT_I8 ? LC_I8 : LC_U8, 0) < 0 ||
        lc_check_size(wp, "packed", layout_bytes(layout, N, K)) < 0)
        return NULL;
    npy_intp dims[2] = {(npy_intp)N, (npy_intp)K};
    PyArrayObject *out = (PyArrayObject *)PyArray_SimpleNew(2, dims, layout == LAYOUT_I8 ? NPY_INT8 : NPY_UINT8);
    if (!out) return NULL;
    const uint8_t *p = PyArray_DATA(wp);
    uint8_t *o = PyArray_DATA(out);
    LC_NOGIL_BEGIN
    unpack(layout, p, N, K, o);
    LC_NOGIL_END
    return (PyObject *)out;
}

/* matmul_tile_params(a float32 or int32 [N, G]) -> [T * G * 16] of the same dtype. */
static PyObject *py_tile_params(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyArray_Check(arg)) { PyErr_SetString(lc_ArgumentError, "a: expected an array"); return NULL; }
    PyArrayObject *a = (PyArrayObject *)arg;
    int typenum = PyArray_TYPE(a);
    if (lc_check_array(a, "a", typenum == NPY_INT32 ? LC_I32 : LC_F32, 0) < 0) return NULL;
    if (PyArray_NDIM(a) != 2 || PyArray_DIM(a, 0) < 1) {
        PyErr_SetString(lc_ShapeError, "a: expected [N, G] with N >= 1");
        return NULL;
    }
    int64_t N = PyArray_DIM(a, 0), G = PyArray_DIM(a, 1), T = (N + NT - 1) / NT;
    PyArrayObject *out = new_array(T * G * NT, typenum);
    if (!out) return NULL;
    tile_params(PyArray_DATA(a), N, G, PyArray_DATA(out));
    return (PyObject *)out;
}

/* matmul_gguf_params(data, source, N, K) -> (d [N, K/32] float32, m or None). */
static PyObject *py_gguf_params(PyObject *self, PyObject *args) {
    (void)self;
    PyArrayObject *data;
    int kind;
    long long N, K;
    if (!PyArg_ParseTuple(args, "O!iLL", &PyArray_Type, &data, &kind, &N, &K)) return NULL;
    if (kind != SRC_Q4_0 && kind != SRC_Q4_1 && kind != SRC_Q8_0) {
        PyErr_Format(lc_ArgumentError, "source: %d is not a GGUF block source", kind);
        return NULL;
    }
    wsrc s;
    int is_signed;
    if (parse_source(data, kind, N, K, K, kind == SRC_Q8_0 ? 8 : 4, &s, &is_signed) < 0) return NULL;
    npy_intp dims[2] = {(npy_intp)N, (npy_intp)(K / QK)};
    PyObject *d = PyArray_SimpleNew(2, dims, NPY_FLOAT32);
    PyObject *m = kind == SRC_Q4_1 ? PyArray_SimpleNew(2, dims, NPY_FLOAT32) : Py_NewRef(Py_None);
    if (!d || !m) { Py_XDECREF(d); Py_XDECREF(m); return NULL; }
    gguf_params(&s, N, K, PyArray_DATA((PyArrayObject *)d),
                m == Py_None ? NULL : PyArray_DATA((PyArrayObject *)m));
    return Py_BuildValue("(NN)", d, m);
}

/* {path name: whether this CPU can run it} for every path but "auto". */
static PyObject *py_available(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    PyObject *d = PyDict_New();
    for (int p = 0; d && p < NPATHS; p++)
        if (p != PATH_AUTO &&
            PyDict_SetItemString(d, path_names[p], path_available(p) ? Py_True : Py_False) < 0)
            Py_CLEAR(d);
    return d;
}

static PyMethodDef methods[] = {
    {"matmul_pack", py_pack, METH_VARARGS,
     "matmul_pack(layout, data, source, N, K, row_codes, bits): pack a weight (see matmul.c)."},
    {"matmul_unpack", py_unpack, METH_VARARGS,
     "matmul_unpack(layout, packed, N, K): the codes [N, K] of a packed weight."},
    {"matmul_tile_params", py_tile_params, METH_O,
     "matmul_tile_params(a [N, G]): per-group parameters in the tile layout."},
    {"matmul_gguf_params", py_gguf_params, METH_VARARGS,
     "matmul_gguf_params(data, source, N, K): GGUF block scales (and Q4_1 mins)."},
    {"matmul_i8_linear", (PyCFunction)(void (*)(void))py_i8_linear, METH_VARARGS | METH_KEYWORDS,
     "int8 dynamic Linear on a packed weight (see matmul.c)."},
    {"matmul_blk_linear", (PyCFunction)(void (*)(void))py_blk_linear, METH_VARARGS | METH_KEYWORDS,
     "block-quantized (4/8-bit) weight-only Linear (see matmul.c)."},
    {"matmul_nf4_linear", (PyCFunction)(void (*)(void))py_nf4_linear, METH_VARARGS | METH_KEYWORDS,
     "NF4 weight-only Linear with float activations (see matmul.c)."},
    {"matmul_available", py_available, METH_NOARGS, "{path: available on this CPU}."},
    {NULL, NULL, 0, NULL},
};

int lc_init_matmul(PyObject *m) {
    if (LC_ADD_CODE_TABLE(m, "matmul_paths", MATMUL_PATHS) < 0 ||
        LC_ADD_CODE_TABLE(m, "matmul_layouts", MATMUL_LAYOUTS) < 0 ||
        LC_ADD_CODE_TABLE(m, "matmul_sources", MATMUL_SOURCES) < 0)
        return -1;
    return lc_add_methods(m, methods);
}
