/* gguf.h: the ggml block formats, described once -- one struct per format with its size
 * check, and the table of formats.  gguf.c quantizes and dequantizes them (the K-quants'
 * definitions are in gguf_k.c); matmul.c reads Q4_0, Q4_1 and Q8_0 blocks directly when it
 * packs a weight for the matmul kernels. */
#ifndef LITECOMP_GGUF_H
#define LITECOMP_GGUF_H

#include <stdint.h>

#define QK 32    /* values per block of the legacy formats */
#define QK_K 256 /* values per K-quant super-block */

typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
typedef struct { uint16_t d; uint8_t qs[QK / 2]; } block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1;
/* Q2_K: 16 sub-blocks of 16, 2-bit codes; one byte per sub-block with a 4-bit scale (low
 * nibble) and a 4-bit min (high nibble); fp16 super-scales d and dmin last. */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; } block_q2_K;
/* Q3_K: 16 sub-blocks of 16, 3-bit codes (low 2 bits in qs, the high bit in hmask); 6-bit
 * signed scales packed in 12 bytes; fp16 d last. */
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; } block_q3_K;
/* Q4_K: 8 sub-blocks of 32; 6-bit scales and mins packed in 12 bytes (see get_scale_min). */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
/* Q5_K: Q4_K plus the fifth bit of every code in qh. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
/* Q6_K: 16 sub-blocks of 16; low 4 bits in ql, high 2 bits in qh, int8 scales, fp16 d last. */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K;

_Static_assert(sizeof(block_q8_0) == 34, "Q8_0 block is 34 bytes");
_Static_assert(sizeof(block_q4_0) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(block_q4_1) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(block_q5_0) == 22, "Q5_0 block is 22 bytes");
_Static_assert(sizeof(block_q5_1) == 24, "Q5_1 block is 24 bytes");
_Static_assert(sizeof(block_q2_K) == 84, "Q2_K block is 84 bytes");
_Static_assert(sizeof(block_q3_K) == 110, "Q3_K block is 110 bytes");
_Static_assert(sizeof(block_q4_K) == 144, "Q4_K block is 144 bytes");
_Static_assert(sizeof(block_q5_K) == 176, "Q5_K block is 176 bytes");
_Static_assert(sizeof(block_q6_K) == 210, "Q6_K block is 210 bytes");

/* The formats litecomp handles: X(NAME, ggml type id, struct suffix, values per block).  The
 * ids are ggml's GGMLQuantizationType; Python reads this table (_C.gguf_formats(), as
 * litecomp.quant.gguf.FORMATS) instead of retyping it.  The 256-value ones are the
 * K-quants (lc_kquant_quantize). */
#define LC_GGUF_TYPES(X)        \
    X(Q4_0, 2, q4_0, QK)        \
    X(Q4_1, 3, q4_1, QK)        \
    X(Q5_0, 6, q5_0, QK)        \
    X(Q5_1, 7, q5_1, QK)        \
    X(Q8_0, 8, q8_0, QK)        \
    X(Q2_K, 10, q2_K, QK_K)     \
    X(Q3_K, 11, q3_K, QK_K)     \
    X(Q4_K, 12, q4_K, QK_K)     \
    X(Q5_K, 13, q5_K, QK_K)     \
    X(Q6_K, 14, q6_K, QK_K)

enum {
#define X(NAME, id, s, blk) LC_GGUF_##NAME = id,
    LC_GGUF_TYPES(X)
#undef X
};

/* ------------------------------------------------------------------ the K-quants (gguf_k.c) */
#define LC_KQ_RUN 16 /* super-blocks quantized by one lc_kquant_quantize call, at most */

/* Quantizes nb <= LC_KQ_RUN consecutive super-blocks x (256 finite floats each) of K-quant
 * `type` into out, as llama.cpp's reference quantizers do; qw[b] is block b's 256
 * importance weights or NULL -- all NULL or none.  simd: the lc_simd() level to use (every
 * level gives the same bytes). */
void lc_kquant_quantize(int type, const float *x, int64_t nb, const float *const *qw,
                        uint8_t *out, int simd);

void lc_dequantize_q2_K(const void *in, float *y);
void lc_dequantize_q3_K(const void *in, float *y);
void lc_dequantize_q4_K(const void *in, float *y);
void lc_dequantize_q5_K(const void *in, float *y);
void lc_dequantize_q6_K(const void *in, float *y);

#endif /* LITECOMP_GGUF_H */
