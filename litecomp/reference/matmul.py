"""NumPy twins of csrc/matmul.c: the exact definitions, float32 operations in the same order."""

import numpy as np

F = np.float32


def quant_i8(x):
    """Symmetric int8 of a 1-D float32 array: (q int8, scale float32)."""
    x = np.asarray(x, F)
    amax = F(np.abs(x).max()) if x.size else F(0)
    if amax == 0:
        return np.zeros(x.shape, np.int8), F(0)
    inv = F(127) / amax
    q = np.clip(np.rint(x * inv), -127, 127).astype(np.int8)
    return q, F(amax / F(127))


def int8_linear(x, qweight, scales, bias=None):
    """y = (float)acc * (sx * sw) (+ bias), acc exact."""
    x = np.asarray(x, F).reshape(-1, qweight.shape[1])
    y = np.empty((x.shape[0], qweight.shape[0]), F)
    w64 = qweight.astype(np.int64)
    for m, row in enumerate(x):
        q, sx = quant_i8(row)
        acc = (w64 @ q.astype(np.int64)).astype(np.int32)
        t = (sx * scales.astype(F)).astype(F)
        r = acc.astype(F) * t
        y[m] = r + bias.astype(F) if bias is not None else r
    return y


def block_linear(x, codes, scales, zeros, offsets, group_size, bias=None):
    """The blk definition (see csrc/matmul.c): Q8 activations per 32-block."""
    x = np.asarray(x, F).reshape(-1, codes.shape[1])
    n, k = codes.shape
    kb = (k + 31) // 32
    bpg = group_size // 32
    g_count = (k + group_size - 1) // group_size
    cp = np.zeros((n, kb * 32), np.int64)
    cp[:, :k] = codes
    y = np.empty((x.shape[0], n), F)
    for m, row in enumerate(x):
        xp = np.zeros(kb * 32, F)
        xp[:k] = row
        xq = np.zeros(kb * 32, np.int64)
        dx = np.zeros(kb, F)
        for b in range(kb):
            seg = row[b * 32:min((b + 1) * 32, k)]
            q, d = quant_i8(seg)
            xq[b * 32:b * 32 + q.size] = q
            dx[b] = d
        sxq = xq.reshape(kb, 32).sum(axis=1)
        acc = np.zeros(n, F)
        for g in range(g_count):
            A = np.zeros(n, F)
            for b in range(g * bpg, min((g + 1) * bpg, kb)):
                isum = cp[:, b * 32:(b + 1) * 32] @ xq[b * 32:(b + 1) * 32] - zeros[:, g].astype(np.int64) * sxq[b]
                A = A + dx[b] * isum.astype(np.int32).astype(F)
            acc = acc + scales[:, g].astype(F) * A
            if offsets is not None:
                X = np.cumsum(row[g * group_size:min((g + 1) * group_size, k)], dtype=F)[-1]
                acc = acc + offsets[:, g].astype(F) * X
        y[m] = acc + bias.astype(F) if bias is not None else acc
    return y


def nf4_linear(x, codes, absmax, table, block_size, bias=None):
    x = np.asarray(x, F).reshape(-1, codes.shape[1])
    n, k = codes.shape
    w = table[codes].astype(F)
    y = np.empty((x.shape[0], n), F)
    for m, row in enumerate(x):
        acc = np.zeros(n, F)
        for b in range(0, k, block_size):
            prod = w[:, b:b + block_size] * row[b:b + block_size]
            acc = acc + absmax[:, b // block_size].astype(F) * np.cumsum(prod, axis=1, dtype=F)[:, -1]
        y[m] = acc + bias.astype(F) if bias is not None else acc
    return y


# ------------------------------------------------------------------ packed layouts
NT = 16  # output channels per tile


def _pad(a, rows, cols):
    out = np.zeros((rows, cols), a.dtype)
    out[: a.shape[0], : a.shape[1]] = a
    return out


def pack(layout, codes):
    """The kernel layout of codes [N, K] (int8 weights for "i8"), as csrc/matmul.c writes it."""
    n, k = codes.shape
    t = -(-n // NT)
    if layout == "i8":
        k4 = -(-k // 4)
        p = _pad(codes, t * NT, k4 * 4).reshape(t, NT, k4, 4).transpose(0, 2, 1, 3)
        return np.ascontiguousarray(p).reshape(-1)
    if layout == "nf4":
        p = _pad(codes, t * NT, k).reshape(t, NT, k).transpose(0, 2, 1)  # [T, K, 16]
        return np.ascontiguousarray(p[..., 0::2] | (p[..., 1::2] << 4)).reshape(-1)
    kb = -(-k // 32)
    p = _pad(codes, t * NT, kb * 32).reshape(t, NT, kb, 32)
    if layout == "blk8":  # [T][KB][8 chunks][16 lanes][4]
        p = p.reshape(t, NT, kb, 8, 4).transpose(0, 2, 3, 1, 4)
        return np.ascontiguousarray(p).reshape(-1)
    lo, hi = p[..., :16], p[..., 16:]  # blk4: [T][KB][4 chunks][16 lanes][4]
    b = (lo | (hi << 4)).reshape(t, NT, kb, 4, 4).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(b).reshape(-1)


def rowsum(qweight):
    """Per-channel sums of the int8 weight, padded to whole tiles (the VNNI compensation)."""
    n = qweight.shape[0]
    s = np.zeros(-(-n // NT) * NT, np.int32)
    s[:n] = qweight.astype(np.int32).sum(axis=1)
    return s


def tile_params(a):
    """[N, G] per-group parameters -> [T][G][16] (padding channels 0)."""
    n, g = a.shape
    t = -(-n // NT)
    return np.ascontiguousarray(_pad(a, t * NT, g).reshape(t, NT, g).transpose(0, 2, 1)).reshape(-1)


def source_codes(source, data, n, k, row_codes, bits):
    """The codes [N, K] a packing source holds (see LC_MATMUL_SOURCES in csrc/matmul.c)."""
    data = np.asarray(data).reshape(-1).view(np.uint8)
    if source == "stream":
        rows = data.reshape(n, -1)
        bitstream = np.unpackbits(rows, axis=1, bitorder="little")[:, : row_codes * bits]
        weights = (1 << np.arange(bits)).astype(np.int64)
        codes = bitstream.reshape(n, row_codes, bits).astype(np.int64) @ weights
        return codes[:, :k].astype(np.uint8)
    if source == "bitsandbytes":
        flat = np.empty(data.size * 2, np.uint8)
        flat[0::2], flat[1::2] = data >> 4, data & 15
        return flat[: n * row_codes].reshape(n, row_codes)[:, :k]
    size, qs = {"Q4_0": (18, 2), "Q4_1": (20, 4), "Q8_0": (34, 2)}[source]
    blocks = data.reshape(n, row_codes // 32, size)[..., qs:]
    if source == "Q8_0":
        codes = blocks.view(np.int8).astype(np.int16) + 128
    else:
        codes = np.concatenate([blocks & 15, blocks >> 4], axis=-1)
    return codes.reshape(n, row_codes)[:, :k].astype(np.uint8)
