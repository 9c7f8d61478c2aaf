/* gguf.h: the GGUF K-quant super-block formats, shared by gguf.c (dispatch, Python entry
 * points) and gguf_k.c (the formats' definitions).
 *
 * A super-block holds QK_K = 256 values.  Each quantizer takes the 256 floats of one
 * super-block and, for the importance-matrix variant, the 256 matching weights (`qw`,
 * NULL without one), and writes one block; each dequantizer is its inverse. */
#ifndef LITECOMP_GGUF_H
#define LITECOMP_GGUF_H

#include "litecomp.h"

#define QK_K 256

/* Q2_K: 16 sub-blocks of 16, 2-bit codes; one byte per sub-block with a 4-bit scale (low
 * nibble) and a 4-bit min (high nibble); fp16 super-scales d and dmin last. */
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; uint16_t d, dmin; } block_q2_K;
/* Q3_K: 16 sub-blocks of 16, 3-bit codes (low 2 bits in qs, the high bit in hmask); 6-bit
 * signed scales packed in 12 bytes; fp16 d last. */
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; uint16_t d; } block_q3_K;
/* Q4_K: 8 sub-blocks of 32, 4-bit codes; 6-bit scales and mins packed in 12 bytes. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
/* Q5_K: Q4_K plus the fifth bit of every code in qh. */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
/* Q6_K: 16 sub-blocks of 16; low 4 bits in ql, high 2 bits in qh, int8 scales, fp16 d last. */
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K;

#define LC_KQ_RUN 16 /* super-blocks quantized by one lc_kquant_quantize call, at most */

/* 1 when `type` (a ggml type id) is a K-quant quantized here. */
int lc_kquant_known(int type);

/* Quantizes nb <= LC_KQ_RUN consecutive super-blocks x (256 finite floats each) of format
 * `type` into out; qw[b] is block b's 256 importance weights or NULL -- all NULL or none.
 * simd: the lc_simd() level to use (every level gives the same bytes). */
void lc_kquant_quantize(int type, const float *x, int64_t nb, const float *const *qw,
                        uint8_t *out, int simd);

void lc_dequantize_q2_K(const void *in, float *y);
void lc_dequantize_q3_K(const void *in, float *y);
void lc_dequantize_q4_K(const void *in, float *y);
void lc_dequantize_q5_K(const void *in, float *y);
void lc_dequantize_q6_K(const void *in, float *y);

#endif /* LITECOMP_GGUF_H */
