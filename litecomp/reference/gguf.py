"""NumPy twins of csrc/gguf.c for the legacy block formats (the definition gguf.quants
also ports from ggml-quants.c)."""

import numpy as np


def _u8(v):  # float -> uint8 through int32, as NumPy's astype does on x86
    v = np.asarray(v, np.float32)
    ok = np.abs(v) < 2.0 ** 31
    return np.where(ok, np.where(ok, v, 0).astype(np.int64) & 0xFF, 0).astype(np.uint8)


def _inv(d):
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _nibbles(q, hi_mask=0x0F):
    return (q[:, :16] & hi_mask) | (q[:, 16:] << np.uint8(4))


def _qh(q):
    return np.packbits((q >> np.uint8(4)) & 1, axis=1, bitorder="little")


def quantize(x, name):
    b = np.asarray(x, np.float32).reshape(-1, 32)
    with np.errstate(all="ignore"):
        if name == "Q8_0":
            d = np.abs(b).max(1, keepdims=True) / np.float32(127)
            v = b * _inv(d)
            a = np.abs(v)
            f = np.floor(a)
            q = np.sign(v) * (f + np.floor(np.float32(2) * (a - f)))  # roundf
            return np.concatenate([d.astype(np.float16).view(np.uint8), _u8(q)], 1)
        if name in ("Q4_0", "Q5_0"):
            nl = 8 if name == "Q4_0" else 16
            m = np.take_along_axis(b, np.abs(b).argmax(1)[:, None], 1)
            d = (m / np.float32(-nl)).astype(np.float32)
            q = np.minimum(_u8(b * _inv(d) + np.float32(nl + 0.5)), 2 * nl - 1)
            parts = [d.astype(np.float16).view(np.uint8)]
            parts += [_qh(q)] if name == "Q5_0" else []
            return np.concatenate(parts + [_nibbles(q)], 1)
        nl = 15 if name == "Q4_1" else 31
        mn, mx = b.min(1, keepdims=True), b.max(1, keepdims=True)
        d = ((mx - mn) / np.float32(nl)).astype(np.float32)
        q = np.minimum(_u8((b - mn) * _inv(d) + np.float32(0.5)), nl)
        parts = [d.astype(np.float16).view(np.uint8), mn.astype(np.float16).view(np.uint8)]
        parts += [_qh(q)] if name == "Q5_1" else []
        return np.concatenate(parts + [_nibbles(q)], 1)


def dequantize(data, name):
    sizes = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20, "Q5_0": 22, "Q5_1": 24}
    b = np.asarray(data, np.uint8).reshape(-1, sizes[name])
    d = b[:, :2].copy().view(np.float16).astype(np.float32)
    if name == "Q8_0":
        return (b[:, 2:].view(np.int8).astype(np.float32) * d).ravel()
    affine = name in ("Q4_1", "Q5_1")
    m = b[:, 2:4].copy().view(np.float16).astype(np.float32) if affine else None
    rest = b[:, 4:] if affine else b[:, 2:]
    if name in ("Q5_0", "Q5_1"):
        qh = np.unpackbits(rest[:, :4], axis=1, bitorder="little")
        rest = rest[:, 4:]
    else:
        qh = np.zeros((b.shape[0], 32), np.uint8)
    q = np.concatenate([rest & 0x0F, rest >> 4], 1) | (qh << 4)
    if affine:
        return (d * q.astype(np.float32) + m).ravel()
    off = 8 if name == "Q4_0" else 16
    return (d * (q.astype(np.float32) - np.float32(off))).ravel()
