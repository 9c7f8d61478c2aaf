"""State-dict workflow: quantize every tensor a recipe names, report the error, and turn
the compact state dict back into float tensors."""

import fnmatch
import math
import re
from dataclasses import dataclass

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_array, as_kernel_input
from ..errors import ArgumentError, FormatError
from .codebook import CodebookTensor, Quant4, codebook_quantize, quantize_4bit
from .core import QTensor, quantize

_SUFFIX = ".qmeta"


@dataclass(frozen=True)
class QuantError:
    """How far a dequantized tensor is from the original."""
    name: str
    bits: int
    sqnr_db: float
    max_abs_err: float
    cosine: float
    bytes_before: int
    bytes_after: int


def error_report(name, x, y, bits=0, bytes_after=0) -> QuantError:
    """SQNR (dB), max |x - y| and cosine similarity of float ``x`` and its float32
    reconstruction ``y``, accumulated in float64 by one C pass (fixed order)."""
    k = as_kernel_input(x, "x", dtypes=_dt.FLOAT_DTYPES)
    yk = np.ascontiguousarray(y, np.float32)
    xx, yy, xy, ee, maxe = _C.error_stats(k.raw, k.code, yk)
    sqnr = math.inf if ee == 0 else (10 * math.log10(xx / ee) if xx else -math.inf)
    cos = xy / math.sqrt(xx * yy) if xx and yy else (1.0 if xx == yy else 0.0)
    return QuantError(name, bits, sqnr, maxe, cos, k.array.nbytes, bytes_after)


def _matcher(pattern):
    if isinstance(pattern, re.Pattern):
        return lambda n: pattern.fullmatch(n) is not None
    if isinstance(pattern, str) and pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda n: rx.fullmatch(n) is not None
    return lambda n: fnmatch.fnmatchcase(n, pattern)


def _spec(value, pattern):
    if value == "skip" or value is None:
        return None
    if isinstance(value, int):
        return {"bits": value}
    if isinstance(value, dict):
        allowed = {"format", "bits", "scheme", "axis", "group_size", "block_size",
                   "double_quant", "sparse", "keep_zeros"}
        unknown = set(value) - allowed
        if unknown:
            raise ArgumentError(f"recipe[{pattern!r}]: unknown keys {sorted(unknown)}")
        return dict(value)
    raise ArgumentError(f"recipe[{pattern!r}]: expected 'skip', a bit width or a dict, "
                        f"got {value!r}")


def quantize_state_dict(state_dict, recipe, *, min_ndim=2):
    """Quantize the tensors of ``state_dict`` that ``recipe`` names.

    recipe: {pattern: spec}; the first matching pattern wins.  A pattern is a glob
    (``"*.weight"``), ``"re:<regex>"`` or a compiled regex (full match).  A spec is "skip",
    a bit width, or a dict of ``quantize`` arguments (bits, scheme, axis, group_size).
    Tensors no pattern names, and tensors with fewer than ``min_ndim`` dims, stay as they
    are.  Returns (compact state dict, [QuantError per quantized tensor]).
    """
    if not isinstance(recipe, dict) or not recipe:
        raise ArgumentError("recipe: expected a non-empty dict {pattern: spec}")
    rules = [(_matcher(p), _spec(v, p)) for p, v in recipe.items()]
    out, report = {}, []
    for name, value in state_dict.items():
        a = as_array(value, name)
        spec = next((s for match, s in rules if match(name)), None)
        if spec is None or a.ndim < min_ndim or a.dtype.kind not in "fV":
            out[name] = value
            continue
        q = quantize_one(a, spec)
        out.update(q.to_state_dict(name))
        report.append(error_report(name, a, q.dequantize(), q.bits, q.nbytes))
    return out, report


def quantize_one(a, spec):
    """One tensor by a recipe spec: format "uniform" (default; ``quantize`` arguments),
    "nf4"/"fp4" (``quantize_4bit``: block_size, double_quant) or "kmeans"
    (``codebook_quantize``: bits, axis, sparse, keep_zeros)."""
    spec = dict(spec)
    fmt = spec.pop("format", "uniform")
    if fmt in ("nf4", "fp4"):
        return quantize_4bit(a, fmt, **spec)
    if fmt == "kmeans":
        return codebook_quantize(a, **spec)
    if fmt != "uniform":
        raise ArgumentError(f"format: {fmt!r} is not one of 'uniform', 'nf4', 'fp4', 'kmeans'")
    return quantize(a, **spec)


_KINDS = {1: QTensor, 2: Quant4, 3: CodebookTensor}


def load_quantized(state_dict, prefix):
    """The quantized tensor stored under ``prefix`` (QTensor, Quant4 or CodebookTensor)."""
    meta = np.asarray(state_dict[f"{prefix}{_SUFFIX}"]).ravel()
    kind = _KINDS.get(int(meta[0])) if meta.size else None
    if kind is None:
        raise FormatError(f"{prefix}.qmeta: unknown quantized tensor kind {meta[:1]}")
    return kind.from_state_dict(state_dict, prefix)


def quantized_names(state_dict):
    """Names of the QTensors stored in a compact state dict."""
    return [k[:-len(_SUFFIX)] for k in state_dict if k.endswith(_SUFFIX)]


def dequantize_state_dict(state_dict, dtype=np.float32):
    """Float tensors again: every QTensor dequantized (to ``dtype``), the rest unchanged."""
    names = set(quantized_names(state_dict))
    part_names = ("qdata", "scales", "zero_points", "qmeta", "absmax", "absmax_q",
                  "absmax_scale", "absmax_offset", "codebook", "mask")
    parts = {f"{n}.{p}" for n in names for p in part_names}
    out = {}
    for key, value in state_dict.items():
        if key in parts:
            if key.endswith(_SUFFIX):
                name = key[:-len(_SUFFIX)]
                out[name] = load_quantized(state_dict, name).dequantize(dtype)
            continue
        out[key] = value
    return out
