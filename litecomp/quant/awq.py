"""Activation-aware scales: AWQ (Lin et al. 2023) and SmoothQuant (Xiao et al. 2022).

Both return per-input-channel scales ``s``: the weight becomes ``W * s`` (columns) and the
input ``x / s``, an exact identity once ``1/s`` is folded into the op that produces x
(a LayerNorm's weight and bias, or the rows of the previous Linear).  The folding is done
by ``litecomp.torch.oneshot``, which says so for a layer it cannot fold.

- ``awq_scales``: llm-awq's grid search over alpha in {0, 1/grid, ..., (grid-1)/grid}:
  s = mean|x|^alpha (>= 1e-4) / sqrt(max s * min s), keeping the alpha whose
  Q(W s) / s gives the lowest layer-output MSE on x.  ``awq_clip``: llm-awq's clipping
  search per (row, group).  The quantizer is litecomp's round-to-nearest (``quantize``).
- ``smoothquant_scales``: s = max|x|^alpha / max|w|^(1-alpha) per input channel.
"""

import numpy as np

from .._check import as_array, check_float, check_int
from ..errors import ArgumentError, NonFiniteError, ShapeError

__all__ = ["awq_scales", "awq_clip", "smoothquant_scales", "fake_quantize_rtn"]

#: Tokens the searches look at, at most (evenly spaced), as llm-awq's clip search does.
MAX_TOKENS = 4096


def _weights(w, name="w"):
    ws = list(w) if isinstance(w, (list, tuple)) else [w]
    if not ws:
        raise ArgumentError(f"{name}: expected a weight or a list of weights")
    out = []
    for i, a in enumerate(ws):
        a = np.asarray(as_array(a, name), np.float32)
        if a.ndim != 2:
            raise ShapeError(f"{name}: expected 2-D [out, in] weights, got shape {a.shape}")
        if out and a.shape[1] != out[0].shape[1]:
            raise ShapeError(f"{name}: the weights do not share one input width "
                             f"({a.shape[1]} vs {out[0].shape[1]})")
        if not np.isfinite(a).all():
            raise NonFiniteError(f"{name}: contains NaN or inf")
        out.append(a)
    return out


def _inputs(x, cols, max_tokens=MAX_TOKENS):
    x = np.asarray(as_array(x, "x"), np.float32)
    if x.ndim < 1 or x.shape[-1] != cols:
        raise ShapeError(f"x: last dimension must be {cols} (the weight's input width), got "
                         f"shape {x.shape}")
    x = x.reshape(-1, cols)
    if x.shape[0] == 0:
        raise ShapeError("x: has no tokens")
    if not np.isfinite(x).all():
        raise NonFiniteError("x: contains NaN or inf")
    if x.shape[0] > max_tokens:  # llm-awq's sampling: every (T // max_tokens)-th token
        x = x[::x.shape[0] // max_tokens]
    return np.ascontiguousarray(x)


def fake_quantize_rtn(w, bits, group_size, scheme="symmetric") -> np.ndarray:
    """Round-to-nearest quantize-dequantize of a 2-D weight (groups along the input axis;
    group_size None: per row), through ``litecomp.quant.quantize``."""
    from .core import quantize
    if group_size is None:
        return quantize(w, bits, scheme=scheme, axis=0).dequantize()
    return quantize(w, bits, scheme=scheme, group_size=group_size).dequantize()


def _check_group(group_size, cols):
    from .gptq import check_group_size
    return check_group_size(group_size, cols)


def awq_scales(w, x, bits=4, group_size=128, *, grid=20, scheme="symmetric") -> np.ndarray:
    """AWQ scales (float32, one per input channel) for the Linear weight ``w`` -- or a list
    of weights that share the input, such as q/k/v -- from calibration inputs ``x``
    ``[..., in]``.  Apply as ``W * s`` and fold ``1/s`` into the op before."""
    from .core import _check_bits
    bits = _check_bits(bits)
    grid = check_int(grid, "grid", 1, 1000)
    ws = _weights(w)
    cols = ws[0].shape[1]
    group_size = _check_group(group_size, cols)
    x = _inputs(x, cols)
    x_mean = np.abs(x).mean(axis=0, dtype=np.float64).astype(np.float32)
    ref = [x @ a.T for a in ws]
    n = sum(r.size for r in ref)
    best_loss, best = np.inf, None
    for i in range(grid):
        alpha = i / grid
        s = np.maximum(x_mean ** np.float32(alpha), np.float32(1e-4)).astype(np.float32)
        s = (s / np.sqrt(s.max() * s.min())).astype(np.float32)
        loss = 0.0
        for a, r in zip(ws, ref):
            wq = fake_quantize_rtn(a * s, bits, group_size, scheme) / s
            loss += float(np.sum((x @ wq.T - r) ** 2, dtype=np.float64))
        loss /= n
        if loss < best_loss:
            best_loss, best = loss, s
    return best


def awq_clip(w, x, bits=4, group_size=128, *, grid=20, max_shrink=0.5,
             scheme="symmetric") -> np.ndarray:
    """AWQ's clipping search: for each (output row, group) the threshold
    amax * (1 - i/grid), i < max_shrink * grid, whose clamped-and-quantized group gives the
    lowest MSE of that group's partial outputs on ``x``.  Returns thresholds (rows, groups);
    clamp with ``np.clip(w, -t, t)`` per group before quantizing."""
    from .core import _check_bits
    bits = _check_bits(bits)
    grid = check_int(grid, "grid", 1, 1000)
    max_shrink = check_float(max_shrink, "max_shrink", 0.0, 1.0)
    (w,) = _weights([w])
    rows, cols = w.shape
    group_size = _check_group(group_size, cols) or cols
    x = _inputs(x, cols, 512)
    G = cols // group_size
    xg = np.ascontiguousarray(x.reshape(-1, G, group_size).transpose(1, 0, 2))  # G, T, gs
    wg = w.reshape(rows, G, group_size)
    wt = np.ascontiguousarray(wg.transpose(1, 2, 0))                               # G, gs, R
    org = np.matmul(xg, wt)                                                        # G, T, R
    amax = np.abs(wg).max(axis=-1)                                                 # R, G
    best = amax.copy()
    best_err = np.full(amax.shape, np.inf)
    for i in range(int(max_shrink * grid)):
        mv = (amax * np.float32(1 - i / grid)).astype(np.float32)
        cw = np.clip(wg, -mv[..., None], mv[..., None]).reshape(rows, cols)
        qw = fake_quantize_rtn(cw, bits, group_size, scheme).reshape(rows, G, group_size)
        out = np.matmul(xg, np.ascontiguousarray(qw.transpose(1, 2, 0)))
        err = ((out - org) ** 2).mean(axis=1).T                                    # R, G
        better = err < best_err
        best_err[better] = err[better]
        best[better] = mv[better]
    return best


def apply_clip(w, thresholds, group_size) -> np.ndarray:
    """``w`` with each (row, group) clamped to [-t, t] (``awq_clip``'s thresholds)."""
    w = np.asarray(w, np.float32)
    rows, cols = w.shape
    gs = group_size or cols
    t = np.asarray(thresholds, np.float32).reshape(rows, cols // gs, 1)
    return np.clip(w.reshape(rows, cols // gs, gs), -t, t).reshape(rows, cols)


def smoothquant_scales(x_absmax, w, alpha=0.5) -> np.ndarray:
    """SmoothQuant scales s_j = max|x_j|^alpha / max|w_:j|^(1 - alpha) (float32; the weight
    maxima and the result floored at 1e-5, as the SmoothQuant code does) for the weight ``w`` or the list of weights sharing the input.
    ``x_absmax``: the per-channel max |x| over the calibration data."""
    alpha = check_float(alpha, "alpha", 0.0, 1.0)
    ws = _weights(w)
    a = np.asarray(as_array(x_absmax, "x_absmax"), np.float32).ravel()
    if a.shape != (ws[0].shape[1],):
        raise ShapeError(f"x_absmax: expected {ws[0].shape[1]} per-channel values, got "
                         f"shape {np.shape(x_absmax)}")
    if not np.isfinite(a).all() or (a < 0).any():
        raise NonFiniteError("x_absmax: must be finite and non-negative")
    wmax = np.maximum(np.max([np.abs(v).max(axis=0) for v in ws], axis=0), np.float32(1e-5))
    s = a ** np.float32(alpha) / wmax ** np.float32(1 - alpha)
    return np.maximum(s, np.float32(1e-5)).astype(np.float32)
