"""``FakeQuantize``: an autograd module for quantization-aware training.

CPU float32 tensors run litecomp's C kernels zero-copy; other devices and dtypes use the
same formulas in torch ops.  Forward and input gradient equal
torch.fake_quantize_per_tensor_affine / fake_quantize_per_channel_affine; with
``learnable=True`` the scale and zero point get LSQ gradients.
"""

import numpy as np
import torch
from torch import nn

from .._check import check_float, check_int
from ..quant import fake as _fake
from ..quant.core import calc_qparams
from ..quant.observers import MinMaxObserver, qrange


def _torch_forward(x, s, z, qmin, qmax, axis):
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    inv = 1.0 / s
    r = torch.round(x * inv) + z
    return (r.clamp(qmin, qmax) - z) * s, r


class _FakeQuantFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, axis, learnable):
        ctx.save_for_backward(x, scale, zero_point)
        ctx.cfg = (qmin, qmax, axis, learnable)
        s = scale.detach().float()
        z = torch.round(zero_point.detach()).to(torch.int32)
        if x.device.type == "cpu" and x.dtype == torch.float32:
            y = _fake.fake_quantize(x.detach().contiguous().numpy(), s.numpy(), z.numpy(),
                                    qmin, qmax, axis=axis)
            return torch.from_numpy(y)
        return _torch_forward(x, s.to(x.device, x.dtype), z.to(x.device, x.dtype), qmin, qmax,
                              axis)[0]

    @staticmethod
    def backward(ctx, gy):
        x, scale, zero_point = ctx.saved_tensors
        qmin, qmax, axis, learnable = ctx.cfg
        s = scale.detach().float()
        z = torch.round(zero_point.detach()).to(torch.int32)
        if x.device.type == "cpu" and x.dtype == torch.float32:
            res = _fake.fake_quantize_backward(
                x.detach().contiguous().numpy(), gy.detach().float().contiguous().numpy(),
                s.numpy(), z.numpy(), qmin, qmax, axis=axis, learnable=learnable)
            if not learnable:
                return torch.from_numpy(res), None, None, None, None, None, None
            dx, ds, dz = res
            return (torch.from_numpy(dx), torch.from_numpy(ds.astype(np.float32)).reshape(
                scale.shape), torch.from_numpy(dz.astype(np.float32)).reshape(zero_point.shape),
                None, None, None, None)
        sf, zf = s.to(x.device, x.dtype), z.to(x.device, x.dtype)
        y, r = _torch_forward(x, sf, zf, qmin, qmax, axis)
        inside = (r >= qmin) & (r <= qmax)
        dx = gy * inside
        if not learnable:
            return dx, None, None, None, None, None, None
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis] = -1
            sf, zf = sf.reshape(shape), zf.reshape(shape)
        ds_el = torch.where(inside, (y - x) / sf, torch.where(r < qmin, qmin - zf, qmax - zf))
        dz_el = torch.where(inside, torch.zeros_like(x), -sf.expand_as(x))
        dims = [d for d in range(x.dim()) if d != axis] if axis is not None else None
        ds = (ds_el * gy).sum(dim=dims) if dims is not None else (ds_el * gy).sum()
        dz = (dz_el * gy).sum(dim=dims) if dims is not None else (dz_el * gy).sum()
        return dx, ds.reshape(scale.shape), dz.reshape(zero_point.shape), None, None, None, None


class FakeQuantize(nn.Module):
    """Observe (min/max) then fake-quantize, like torch.ao.quantization.FakeQuantize.

    dtype "quint8"/"qint8", scheme "affine"/"symmetric", axis for per channel; or any
    width ``bits`` (2 to 16), ``signed`` codes or unsigned (dtype is then not used);
    ``averaging_constant``: torch's moving-average min/max instead of the running one;
    ``learnable=True`` makes scale and zero_point parameters trained with LSQ gradients
    (initialised from the observer on the first forward).  ``observe`` switches the
    observer on and off (off after the qparams are frozen).
    """

    def __init__(self, dtype="quint8", scheme="affine", reduce_range=False, *, axis=None,
                 learnable=False, bits=None, signed=False, averaging_constant=None):
        super().__init__()
        if bits is None:
            self.qmin, self.qmax = qrange(dtype, reduce_range)
            self.observer = MinMaxObserver(dtype, scheme, reduce_range, axis=axis)
        else:  # any width: signed [-2**(b-1), 2**(b-1) - 1] or unsigned [0, 2**b - 1]
            bits = check_int(bits, "bits", 2, 16)
            self.qmin, self.qmax = ((-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed
                                    else (0, (1 << bits) - 1))
            self.observer = MinMaxObserver("qint8" if signed else "quint8", scheme, axis=axis)
        if averaging_constant is not None:  # torch's moving-average observer
            self.observer.averaging_constant = check_float(averaging_constant,
                                                           "averaging_constant", 0, 1)
        self.bits, self.signed = bits, signed
        self.axis = axis
        self.learnable = learnable
        self.observe = True
        if learnable:
            self.scale = nn.Parameter(torch.ones(1))
            self.zero_point = nn.Parameter(torch.zeros(1))
        else:
            self.register_buffer("scale", torch.ones(1))
            self.register_buffer("zero_point", torch.zeros(1, dtype=torch.int32))
        self._initialised = False

    def forward(self, x):
        if self.observe and not (self.learnable and self._initialised):
            self.observer.update(x.detach().float().cpu().numpy())
            s, z = self._qparams()
            with torch.no_grad():
                if self.learnable:
                    self.scale.data = torch.from_numpy(s).to(self.scale.device)
                    self.zero_point.data = torch.from_numpy(z.astype(np.float32)).to(
                        self.zero_point.device)
                else:
                    self.scale = torch.from_numpy(s).to(x.device)
                    self.zero_point = torch.from_numpy(z).to(x.device)
            self._initialised = True
        if self.learnable:  # as torch's _LearnableFakeQuantize: a step never makes s <= 0
            with torch.no_grad():
                self.scale.clamp_(min=float(np.finfo(np.float32).eps))
        zp = self.zero_point if self.learnable else self.zero_point.float()
        return _FakeQuantFn.apply(x, self.scale, zp, self.qmin, self.qmax, self.axis,
                                  self.learnable)

    def _qparams(self):
        o = self.observer
        if self.bits is None:
            return o.qparams()
        return calc_qparams(o.min_val, o.max_val, self.qmin, self.qmax, o.scheme,
                            zero_point_symmetric=0 if self.signed else 1 << (self.bits - 1))

    def extra_repr(self):
        return (f"qmin={self.qmin}, qmax={self.qmax}, axis={self.axis}, "
                f"learnable={self.learnable}")
