"""Fake quantization for quantization-aware training: forward and backward kernels.

forward:  y = (clamp(nearbyint(x / s) + zp, qmin, qmax) - zp) * s   (x / s as x * (1/s))
backward: dx = dy where qmin <= nearbyint(x / s) + zp <= qmax, else 0 (clipped STE), and
the LSQ gradients of a learnable scale and zero point, summed per tensor or per channel.
Values and input gradients match torch.fake_quantize_per_tensor_affine /
fake_quantize_per_channel_affine.
"""

import numpy as np

from .. import _C
from .._check import as_array, check_axis, check_int
from ..errors import ArgumentError, ShapeError


def _prepare(x, scale, zero_point, qmin, qmax, axis):
    x = np.ascontiguousarray(as_array(x, "x"), np.float32)
    qmin, qmax = check_int(qmin, "qmin"), check_int(qmax, "qmax")
    if qmin > qmax:
        raise ArgumentError(f"qmin: {qmin} is greater than qmax {qmax}")
    s = np.ascontiguousarray(np.atleast_1d(np.asarray(scale, np.float32)).ravel())
    z = np.atleast_1d(np.asarray(zero_point)).ravel()
    if axis is None:
        view = (1, 1, x.size, 0)
        want = 1
    else:
        axis = check_axis(axis, max(x.ndim, 1))
        shape = x.shape or (1,)
        view = (int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:])), 1)
        want = shape[axis]
    if s.size != want or z.size != want:
        raise ShapeError(f"scale: expected {want} scale(s) and zero point(s), got {s.size} "
                         f"and {z.size}")
    with np.errstate(divide="ignore", over="ignore"):
        ok = (s > 0) & np.isfinite(s) & np.isfinite(np.float32(1) / s)
    if not np.all(ok):
        raise ArgumentError("scale: must be positive and finite, with a finite float32 inverse")
    return x, s, np.ascontiguousarray(z, np.int32), qmin, qmax, view


def fake_quantize(x, scale, zero_point, qmin, qmax, *, axis=None) -> np.ndarray:
    """Quantize-dequantize ``x`` (float32) per tensor, or per channel along ``axis``."""
    x, s, z, qmin, qmax, view = _prepare(x, scale, zero_point, qmin, qmax, axis)
    y = np.empty_like(x)
    _C.fake_quant(x, *view, s, z, qmin, qmax, None, y, None, None, None)
    return y


def fake_quantize_backward(x, grad_y, scale, zero_point, qmin, qmax, *, axis=None,
                           learnable=False):
    """Gradient of fake_quantize: ``grad_x`` (clipped straight-through estimator), and with
    ``learnable=True`` also LSQ ``(grad_x, grad_scale, grad_zero_point)`` (float64 sums,
    one per tensor or per channel, reduced in a fixed order)."""
    x, s, z, qmin, qmax, view = _prepare(x, scale, zero_point, qmin, qmax, axis)
    dy = np.ascontiguousarray(as_array(grad_y, "grad_y"), np.float32)
    if dy.shape != x.shape:
        raise ShapeError(f"grad_y: shape {dy.shape} does not match x {x.shape}")
    dx = np.empty_like(x)
    if not learnable:
        _C.fake_quant(x, *view, s, z, qmin, qmax, dy, None, dx, None, None)
        return dx
    ds = np.empty(s.size, np.float64)
    dz = np.empty(s.size, np.float64)
    _C.fake_quant(x, *view, s, z, qmin, qmax, dy, None, dx, ds, dz)
    return dx, ds, dz
