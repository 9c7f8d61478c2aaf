/* quant.h: what the quantization families (quant.c, gguf.c, matmul.c) share; the general
 * conversions (f16, bf16, round-half-even) live in litecomp.h. */
#ifndef LITECOMP_QUANT_H
#define LITECOMP_QUANT_H

#include "litecomp.h"

#include <math.h>

/* float -> uint8 the way NumPy's astype does it on x86 (through int32): values outside the
 * int32 range and NaN become 0, others wrap modulo 256.  gguf.quants relies on it. */
static inline uint8_t lc_f32_to_u8_numpy(float v) {
    return fabsf(v) < 2147483648.0f ? (uint8_t)(int32_t)v : 0;
}

/* litecomp's dense packing (litecomp.quant.pack_codes), row by row: row r's codes form one
 * little-endian bit stream; code i of the row occupies stream bits [i*bits, (i+1)*bits), least significant bit first, and stream bit
 * j is bit (j % 8) of byte j / 8.  Each row starts on a byte boundary; unused high bits of a
 * row's last byte are zero.  For 4 bits this is torch's quint4x2 order (even index -> low
 * nibble), for 2 bits ggml's; 8 bits is the identity. */
static inline void lc_pack_row(const uint8_t *c, int64_t n, int bits, uint8_t *o, int64_t nbytes) {
    memset(o, 0, (size_t)nbytes);
    uint32_t mask = (1u << bits) - 1u;
    uint64_t acc = 0;
    int have = 0;
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++) {
        acc |= (uint64_t)(c[i] & mask) << have;
        have += bits;
        while (have >= 8) { o[j++] = (uint8_t)acc; acc >>= 8; have -= 8; }
    }
    if (have > 0) o[j] = (uint8_t)acc;
}

/* The first n codes of one packed row (the inverse of lc_pack_row). */
static inline void lc_unpack_row(const uint8_t *p, int64_t n, int bits, uint8_t *c) {
    uint32_t mask = (1u << bits) - 1u;
    uint64_t acc = 0;
    int have = 0;
    int64_t j = 0;
    for (int64_t i = 0; i < n; i++) {
        while (have < bits) { acc |= (uint64_t)p[j++] << have; have += 8; }
        c[i] = (uint8_t)(acc & mask);
        acc >>= bits;
        have -= bits;
    }
}

#endif /* LITECOMP_QUANT_H */
