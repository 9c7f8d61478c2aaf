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
  static activations (8-bit only, ``input_bits`` given): also ``input_scale`` float32 [1]
         and ``input_zero_point`` int32 [1] (codes ``clamp(rint(x / s) + zp, 0, 2**input_bits - 1)``).
"""

import re

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ArgumentError, ShapeError
from ..io.atomic import deferred_interrupt
from ..quant import matmul as _mm
from ..quant.core import QTensor, quantize
from . import from_numpy, to_numpy


class QuantLinear(nn.Module):
    """A Linear layer with int8 (per channel) or 4-bit (grouped) packed weights."""

    def __init__(self, in_features, out_features, bias=True, *, bits=8, group_size=128,
                 scheme="symmetric", input_bits=None):
        super().__init__()
        if bits not in (4, 8):
            raise ArgumentError(f"bits: must be 4 or 8, got {bits!r}")
        if input_bits is not None and (bits != 8 or not 2 <= input_bits <= 8):
            raise ArgumentError(f"input_bits: static activations take 2 to 8 bits with 8-bit "
                                f"weights, got input_bits={input_bits!r} with bits={bits}")
        self.input_bits = input_bits
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
        if input_bits is not None:
            self.register_buffer("input_scale", torch.ones(1))
            self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32))
        self._layer = None
        self._layer_key = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bits=8, group_size=128, scheme="symmetric",
                    qparams=None, input_qparams=None, input_bits=8):
        """Quantize a Linear's weight: 8 bits symmetric per output channel, or 4 bits in
        groups of ``group_size`` along the input axis (``litecomp.quant.quantize``; a last
        group shorter than ``group_size`` when it does not divide in_features).

        ``qparams=(scales, zero_points)``: the weight's parameters as ``quantize`` takes them
        (unsigned codes; [N] for 8 bits with zero point 128, [N, G] for 4 bits), e.g. from a
        weight observer or a trained fake quantizer, instead of the weight's min/max.
        ``input_qparams=(scale, zero_point)`` (8-bit weights): static activations,
        ``input_bits``-bit codes (see ``litecomp.quant.matmul.Int8Linear``)."""
        w = to_numpy(linear.weight.detach().float())
        b = linear.bias
        m = cls(linear.in_features, linear.out_features, b is not None, bits=bits,
                group_size=group_size, scheme=scheme,
                input_bits=None if input_qparams is None else input_bits)
        if input_qparams is not None:
            s, z = _mm._input_qparams(input_qparams, input_bits)
            m.input_scale.fill_(s)
            m.input_zero_point.fill_(z)
        if bits == 8:
            if scheme != "symmetric":
                raise ArgumentError("scheme: 8-bit QuantLinear is symmetric per channel")
            q = quantize(w, 8, axis=0, qparams=qparams)
            if qparams is not None and (q.zero_points != 128).any():
                raise ArgumentError("qparams: 8-bit weights are symmetric (zero point 128 in "
                                    "unsigned codes)")
            # uint8 codes with zero point 128 are the int8 weight with its top bit flipped
            m.qweight.copy_(from_numpy((q.data ^ np.uint8(0x80)).view(np.int8)))
        else:
            q, k = _quantize_rows(w, group_size, scheme, qparams)
            packed = q.data[:, : -(-k // 2)]
            m.qweight.copy_(from_numpy(np.ascontiguousarray(packed)))
            if k % 2:  # the padding code shares the last byte; store it as 0
                m.qweight[:, -1] &= 15
            m.zeros.copy_(from_numpy(q.zero_points))
        m.scales.copy_(from_numpy(q.scales))
        if b is not None:
            m.bias.copy_(b.detach().float())
        return m.to(linear.weight.device)

    def qtensor(self):
        """The weight as a ``litecomp.quant.QTensor`` (unsigned codes; 8-bit per output
        channel with zero point 128, or 4-bit groups along the input axis, which then must
        divide in_features)."""
        n, k = self.out_features, self.in_features
        if self.bits == 8:
            data = (to_numpy(self.qweight).view(np.uint8) ^ np.uint8(0x80)).copy()
            return QTensor(data, to_numpy(self.scales).copy(), np.full(n, 128, np.uint8), 8,
                           (n, k), "symmetric", 0)
        if k % self.group_size:
            raise ShapeError(f"group_size: {self.group_size} does not divide in_features {k}, "
                             "which a QTensor needs")
        return QTensor(to_numpy(self.qweight).copy(), to_numpy(self.scales).copy(),
                       to_numpy(self.zeros).copy(), 4, (n, k), self.scheme, 1, self.group_size)

    @classmethod
    def from_qtensor(cls, q, bias=None, *, input_qparams=None, input_bits=8):
        """The layer holding a QTensor weight [out, in] (8-bit symmetric per output channel,
        or 4-bit groups along the input axis), as ``qtensor()`` gives it back."""
        if len(q.shape) != 2:
            raise ShapeError(f"q: a Linear weight must be 2-D, got shape {q.shape}")
        n, k = q.shape
        if q.bits == 8 and q.group_size is None and q.axis in (0, None) and \
                (np.asarray(q.zero_points) == 128).all():
            m = cls(k, n, bias is not None, bits=8,
                    input_bits=None if input_qparams is None else input_bits)
            m.qweight.copy_(from_numpy((q.data ^ np.uint8(0x80)).view(np.int8)))
            m.scales.copy_(from_numpy(np.broadcast_to(np.asarray(q.scales, np.float32)
                                                      .reshape(-1), (n,)).copy()))
        elif q.bits == 4 and q.group_size and q.axis == 1 and input_qparams is None:
            m = cls(k, n, bias is not None, bits=4, group_size=q.group_size, scheme=q.scheme)
            m.qweight.copy_(from_numpy(np.ascontiguousarray(q.data)))
            m.scales.copy_(from_numpy(np.asarray(q.scales, np.float32).reshape(n, -1)))
            m.zeros.copy_(from_numpy(np.asarray(q.zero_points, np.uint8).reshape(n, -1)))
        else:
            raise ArgumentError(f"q: a QuantLinear holds 8-bit symmetric per-channel or 4-bit "
                                f"grouped weights (static input with 8-bit only), got {q!r}")
        if input_qparams is not None:
            sc, z = _mm._input_qparams(input_qparams, input_bits)
            m.input_scale.fill_(sc)
            m.input_zero_point.fill_(z)
        if bias is not None:
            m.bias.copy_(torch.as_tensor(np.asarray(bias, np.float32)))
        return m

    def _kernel_layer(self):
        """The packed litecomp layer, rebuilt whenever the buffers change (load_state_dict);
        the kernels read the buffers as they are (no unpacking in Python)."""
        key = tuple((t.data_ptr(), t._version) for t in self.buffers())
        if self._layer is None or key != self._layer_key:
            bias = to_numpy(self.bias) if self.bias is not None else None
            if self.bits == 8:
                qp = None if self.input_bits is None else (float(self.input_scale),
                                                           int(self.input_zero_point))
                self._layer = _mm.Int8Linear(to_numpy(self.qweight), to_numpy(self.scales), bias,
                                             input_qparams=qp, input_bits=self.input_bits or 8)
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
        if self.input_bits is not None:  # the codes the kernel would see
            s, z = self.input_scale.to(x.dtype), self.input_zero_point.to(x.dtype)
            x = (torch.clamp(torch.round(x * (1 / s)) + z, 0, (1 << self.input_bits) - 1) - z) * s
        return F.linear(x, self.dequantized_weight().to(x.dtype),
                        None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self):
        g = f", group_size={self.group_size}, scheme={self.scheme}" if self.bits == 4 else ""
        if self.input_bits is not None:
            g += f", static {self.input_bits}-bit input"
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bits={self.bits}{g}, bias={self.bias is not None}")


def _quantize_rows(w, group_size, scheme, qparams):
    """4-bit codes of a weight whose in_features need not divide group_size (zero-padded
    rows, as ``quantize_rows``), with given [N, G] qparams or the groups' own min/max."""
    if qparams is None:
        return _mm.quantize_rows(w, 4, group_size=group_size, scheme=scheme)
    k = w.shape[1]
    kp = -(-k // group_size) * group_size
    wp = w if kp == k else np.pad(w, ((0, 0), (0, kp - k)))
    return quantize(wp, 4, scheme=scheme, group_size=group_size, qparams=qparams), k


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
