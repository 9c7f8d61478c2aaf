"""Quantized Linear for torch models: ``QuantLinear`` and the ChatGLM-style module swap
``quantize_model(model, bits=4)``.

``QuantLinear`` quantizes with ``litecomp.quant.quantize`` (a QTensor: 8-bit per output
channel, or 4-bit groups along the input axis) and keeps the result in buffers (so
``state_dict()`` saves the small form); on CPU float tensors it runs the
``litecomp.quant.matmul`` kernels, which read those buffers directly; on other devices or
under autograd it dequantizes and calls ``F.linear`` (same weights, float math).

State dict of a QuantLinear (prefix omitted):
  8-bit: ``qweight`` int8 [N, K], ``scales`` float32 [N], ``bias`` (if any)
  4-bit: ``qweight`` uint8 [N, ceil(K/2)] (element k in the low nibble when k is even, the high
         nibble when odd -- torch's quint4x2 order), ``scales`` float32 [N, G],
         ``zeros`` uint8 [N, G], ``bias`` (if any); G = ceil(K / group_size).
"""

import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ArgumentError
from ..io.atomic import deferred_interrupt
from ..quant import matmul as _mm
from ..quant.core import quantize
from . import from_numpy, to_numpy


class QuantLinear(nn.Module):
    """A Linear layer with int8 (per channel) or 4-bit (grouped) packed weights."""

    def __init__(self, in_features, out_features, bias=True, *, bits=8, group_size=128,
                 scheme="symmetric"):
        super().__init__()
        if bits not in (4, 8):
            raise ArgumentError(f"bits: must be 4 or 8, got {bits!r}")
        if scheme not in ("symmetric", "affine"):
            raise ArgumentError(f"scheme: must be 'symmetric' or 'affine', got {scheme!r}")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size, self.scheme = bits, group_size, scheme
        if bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
            self.register_buffer("scales", torch.ones(out_features))
        else:
            g = -(-in_features // group_size)
            self.register_buffer("qweight", torch.zeros(out_features, -(-in_features // 2), dtype=torch.uint8))
            self.register_buffer("scales", torch.ones(out_features, g))
            self.register_buffer("zeros", torch.full((out_features, g), 8, dtype=torch.uint8))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._layer = None
        self._layer_key = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits=8, group_size=128, scheme="symmetric"):
        """Quantize a Linear's weight: 8 bits symmetric per output channel, or 4 bits in
        groups of ``group_size`` along the input axis (``litecomp.quant.quantize``; a last
        group shorter than ``group_size`` when it does not divide in_features)."""
        w = to_numpy(linear.weight.detach())
        b = linear.bias
        m = cls(linear.in_features, linear.out_features, b is not None, bits=bits,
                group_size=group_size, scheme=scheme)
        if bits == 8:
            if scheme != "symmetric":
                raise ArgumentError("scheme: 8-bit QuantLinear is symmetric per channel")
            q = quantize(w, 8, axis=0)
            # uint8 codes with zero point 128 are the int8 weight with its top bit flipped
            m.qweight.copy_(from_numpy((q.data ^ np.uint8(0x80)).view(np.int8)))
        else:
            q, k = _mm.quantize_rows(w, 4, group_size=group_size, scheme=scheme)
            packed = q.data[:, : -(-k // 2)]
            m.qweight.copy_(from_numpy(np.ascontiguousarray(packed)))
            if k % 2:  # the padding code shares the last byte; store it as 0
                m.qweight[:, -1] &= 15
            m.zeros.copy_(from_numpy(q.zero_points))
        m.scales.copy_(from_numpy(q.scales))
        if b is not None:
            m.bias.copy_(b.detach().float())
        return m.to(linear.weight.device)

    def _kernel_layer(self):
        """The packed litecomp layer, rebuilt whenever the buffers change (load_state_dict);
        the kernels read the buffers as they are (no unpacking in Python)."""
        key = tuple((t.data_ptr(), t._version) for t in self.buffers())
        if self._layer is None or key != self._layer_key:
            bias = to_numpy(self.bias) if self.bias is not None else None
            if self.bits == 8:
                self._layer = _mm.Int8Linear(to_numpy(self.qweight), to_numpy(self.scales), bias)
            else:
                self._layer = _mm.BlockLinear.from_rows(
                    to_numpy(self.qweight), 4, (self.out_features, self.in_features),
                    to_numpy(self.scales), to_numpy(self.zeros), group_size=self.group_size,
                    bias=bias, kind=self.scheme)
            self._layer_key = key
        return self._layer

    def dequantized_weight(self) -> torch.Tensor:
        """The float weight these buffers stand for (for non-CPU devices and checks)."""
        if self.bits == 8:
            return self.qweight.float() * self.scales[:, None]
        q = self.qweight
        codes = torch.stack([q & 15, q >> 4], dim=-1).reshape(q.shape[0], -1)[:, : self.in_features]
        g = torch.arange(self.in_features, device=q.device) // self.group_size
        return (codes.float() - self.zeros.float()[:, g]) * self.scales[:, g]

    def forward(self, x):
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and x.requires_grad):
            y = self._kernel_layer()(to_numpy(x))  # any float dtype; the layer converts in C
            return from_numpy(y).to(x.dtype)
        return F.linear(x, self.dequantized_weight().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        g = f", group_size={self.group_size}, scheme={self.scheme}" if self.bits == 4 else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}{g}, bias={self.bias is not None}")


def _legacy_layers(layers):
    """The older ``layers=`` argument (a glob, a list of globs, or a regex searched
    anywhere in the name) as ``targets``."""
    import warnings
    warnings.warn("quantize_model(layers=) is deprecated; use targets= (and ignore=)",
                  DeprecationWarning, stacklevel=3)
    if isinstance(layers, re.Pattern):
        return [re.compile(f".*(?:{layers.pattern}).*", layers.flags)]
    return layers


def quantize_model(model: nn.Module, bits=8, group_size=128, layers=None, *, targets=None,
                   ignore=None, scheme="symmetric", inplace=True) -> nn.Module:
    """Replace every ``nn.Linear`` that ``targets`` / ``ignore`` select (``litecomp.select``
    patterns: globs or ``re:`` on module names, or class names such as ``"Linear"``;
    default every Linear) by a ``QuantLinear``; ChatGLM's ``model.quantize(bits)``.

    Linear layers owned by ``nn.MultiheadAttention`` are left alone: attention reads their
    ``weight`` directly, so swapping them would break it (torch's quantize_dynamic skips
    them too).  Returns the model; the names of the swapped layers are in
    ``model._litecomp_quantized``.  ``layers=`` is the older spelling of ``targets``.
    """
    from .select import select_modules
    if layers is not None:
        if targets is not None:
            raise ArgumentError("layers: is the older spelling of targets; give one")
        targets = _legacy_layers(layers)
    skip = set()
    for name, mod in model.named_modules():
        if isinstance(mod, nn.MultiheadAttention):
            skip.update(f"{name}.{child}" if name else child for child, _ in mod.named_modules() if child)
    chosen = select_modules(model, targets, ignore, what="Linear modules",
                            candidates=lambda n, m: isinstance(m, nn.Linear) and n not in skip)
    layers = {n: QuantLinear.from_linear(m, bits=bits, group_size=group_size, scheme=scheme)
              for n, m in chosen}  # every layer converted before the model changes
    if not inplace:
        import copy
        model = copy.deepcopy(model)
    with deferred_interrupt():              # Ctrl-C cannot leave the model half-swapped
        for name, q in layers.items():
            parent_name, _, attr = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, attr, q)
        model._litecomp_quantized = list(layers)
    return model
