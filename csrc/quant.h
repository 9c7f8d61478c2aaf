/* quant.h: a scalar conversion shared by the quantization families (quant.c, gguf.c);
 * the general ones (f16, bf16, round-half-even) live in litecomp.h. */
#ifndef LITECOMP_QUANT_H
#define LITECOMP_QUANT_H

#include "litecomp.h"

#include <math.h>

/* float -> uint8 the way NumPy's astype does it on x86 (through int32): values outside the
 * int32 range and NaN become 0, others wrap modulo 256.  gguf.quants relies on it. */
static inline uint8_t lc_f32_to_u8_numpy(float v) {
    return fabsf(v) < 2147483648.0f ? (uint8_t)(int32_t)v : 0;
}

#endif /* LITECOMP_QUANT_H */
