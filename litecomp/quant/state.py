"""State-dict workflow: quantize every tensor a recipe names, report the error, and turn
the compact state dict back into float tensors."""

import math
import os
from dataclasses import dataclass

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_array, as_kernel_input
from ..errors import ArgumentError, FormatError
from .codebook import CodebookTensor, Quant4, codebook_quantize, quantize_4bit
from .core import QTensor, quantize
from ..recipe import require_data_free, stages
from ..select import select

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


_LEGACY_KEYS = ("format", "bits", "scheme", "axis", "group_size", "block_size",
                "double_quant", "sparse", "keep_zeros")
_FORMAT_METHOD = {"uniform": "rtn", "nf4": "nf4", "fp4": "fp4", "kmeans": "kmeans"}


def _legacy_spec(value, pattern):
    if value == "skip" or value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return {"bits": value}
    if isinstance(value, dict):
        unknown = set(value) - set(_LEGACY_KEYS)
        if unknown:
            raise ArgumentError(f"recipe[{pattern!r}]: unknown keys {sorted(unknown)}")
        return dict(value)
    raise ArgumentError(f"recipe[{pattern!r}]: expected 'skip', a bit width or a dict, "
                        f"got {value!r}")


def _legacy_stages(recipe):
    """The older ``{pattern: spec}`` form as stages: the first matching pattern wins, and a
    "skip" pattern keeps its tensors out of every later stage."""
    out, skipped = [], []
    for pattern, value in recipe.items():
        spec = _legacy_spec(value, pattern)
        if spec is None:
            skipped.append(pattern)
            continue
        fmt = spec.pop("format", "uniform")
        if fmt not in _FORMAT_METHOD:
            raise ArgumentError(f"format: {fmt!r} is not one of "
                                f"{', '.join(map(repr, _FORMAT_METHOD))}")
        out.append({"method": _FORMAT_METHOD[fmt], "targets": [pattern],
                    "ignore": list(skipped), **spec})
    return out


def _is_stage_form(recipe):
    return isinstance(recipe, (list, tuple, str, os.PathLike)) or (
        isinstance(recipe, dict) and "method" in recipe)


def quantize_state_dict(state_dict, recipe, *, min_ndim=2):
    """Quantize the tensors of ``state_dict`` that ``recipe`` selects.

    recipe: a stage or list of stages (``litecomp.recipe``: ``{"method": "rtn", "bits": 4,
    "group_size": 128, "targets": [...], "ignore": [...]}``; methods rtn, nf4, fp4, kmeans),
    or the older ``{pattern: spec}`` dict (a spec is "skip", a bit width, or a dict of
    ``quantize`` arguments with an optional ``format``; the first matching pattern wins).
    Each tensor is quantized by the first stage that selects it.  Tensors no stage selects,
    and tensors with fewer than ``min_ndim`` dims, stay as they are.  Returns (compact
    state dict, [QuantError per quantized tensor]).
    """
    strict = _is_stage_form(recipe)
    if not strict:  # the older form never required a pattern to match
        if not isinstance(recipe, dict) or not recipe:
            raise ArgumentError("recipe: expected a stage, a list of stages, or a non-empty "
                                "dict {pattern: spec}")
        recipe = _legacy_stages(recipe)
        if not recipe:
            return dict(state_dict), []
    plan = stages(recipe, family="quant")
    require_data_free(plan, "quantize_state_dict")
    candidates = [k for k, v in state_dict.items()
                  if (a := as_array(v, k)).ndim >= min_ndim and a.dtype.kind in "fV"]
    chosen = {}
    for stage in plan:
        for name in select(candidates, stage.targets, stage.ignore, strict=strict,
                           what=f"float tensors with {min_ndim}+ dimensions"):
            chosen.setdefault(name, stage)
    out, report = {}, []
    for name, value in state_dict.items():
        stage = chosen.get(name)
        if stage is None:
            out[name] = value
            continue
        a = as_array(value, name)
        q = quantize_stage(a, stage)
        out.update(q.to_state_dict(name))
        report.append(error_report(name, a, q.dequantize(), q.bits, q.nbytes))
    return out, report


def quantize_stage(a, stage):
    """One tensor by a quantization stage (methods rtn, fp8, nf4, fp4, kmeans)."""
    o = {k: v for k, v in stage.options.items() if k != "activations"}  # export metadata
    if stage.method == "gguf":
        raise ArgumentError(f"{stage.where()}: gguf stages are stored by litecomp.export.gguf "
                            "(litecomp compress --format gguf), not in a state dict")
    if stage.method == "fp8":
        from .fp8 import quantize_fp8
        return quantize_fp8(a, **o)
    if stage.method in ("nf4", "fp4"):
        return quantize_4bit(a, stage.method, **o)
    if stage.method == "kmeans":
        return codebook_quantize(a, **o)
    return quantize(a, **o)


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


from .fp8 import FP8Tensor  # noqa: E402

_KINDS = {1: QTensor, 2: Quant4, 3: CodebookTensor, 4: FP8Tensor}


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
                  "absmax_scale", "absmax_offset", "codebook", "mask", "perm")
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
