/* quant.h: scalar conversions shared by the quantization families (quant.c, gguf.c). */
#ifndef LITECOMP_QUANT_H
#define LITECOMP_QUANT_H

#include "litecomp.h"

#include <math.h>

/* float32 -> float16, round to nearest even; overflow -> inf (IEEE); NaN stays NaN. */
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

/* float -> uint8 the way NumPy's astype does it on x86 (through int32): values outside the
 * int32 range and NaN become 0, others wrap modulo 256.  gguf.quants relies on it. */
static inline uint8_t lc_f32_to_u8_numpy(float v) {
    return fabsf(v) < 2147483648.0f ? (uint8_t)(int32_t)v : 0;
}

/* nearbyintf (round half to even) without a libm call: adding and subtracting 1.5 * 2^23
 * rounds exactly for |v| < 2^22; larger values take the library path.  (-0.5 gives +0.0
 * where nearbyintf gives -0.0; every caller adds a zero point or converts to an integer,
 * where the sign of zero cannot matter.) */
static inline float lc_rne(float v) {
    return fabsf(v) < 4194304.0f ? (v + 12582912.0f) - 12582912.0f : nearbyintf(v);
}

/* Threads for a parallel loop over `elements` values: small jobs stay on the calling thread.
 * Waking the team costs microseconds on an idle machine but can cost a scheduler slice
 * (milliseconds) on a busy one -- far more than quantizing a bias.  Results never depend
 * on it (fixed blocks, fixed reduction order). */
#define LC_PARALLEL_MIN ((int64_t)1 << 18)
static inline int lc_team(int64_t elements) {
    return elements >= LC_PARALLEL_MIN ? lc_threads() : 1;
}

#endif /* LITECOMP_QUANT_H */
