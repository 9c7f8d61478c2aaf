"""Recipes: what to do to which tensors, as data.

A *stage* is one dict: a ``method``, the ``targets`` / ``ignore`` patterns of
``litecomp.select`` and that method's own keys.  A *recipe* is a stage or a list of stages
(or a path to a ``.json`` / ``.yaml`` file holding one), run in order::

    [{"method": "magnitude", "targets": ["*.weight"], "ignore": ["embed.*"], "sparsity": 0.5},
     {"method": "rtn", "bits": 4, "group_size": 128, "ignore": ["embed.*", "fc.*"]}]

Recipes speak of ``sparsity``, the fraction of a tensor's entries that end up zero; the mask
functions of ``litecomp.prune`` keep torch's ``amount`` (an int count or a float fraction).
Every method, with the keys it takes, is listed once in ``METHODS``; a capability that adds
a method adds one line there and its runner next to its own code.

>>> [s.method for s in stages({"method": "magnitude", "sparsity": 0.5})]
['magnitude']
>>> stages([{"method": "rtn", "bits": 4, "groupsize": 128}])
Traceback (most recent call last):
...
litecomp.errors.ArgumentError: recipe[0]: unknown key 'groupsize' for method 'rtn'; it takes bits, group_size, scheme, axis, activations
"""

import json
import os
from dataclasses import dataclass, field
from typing import Optional

from .errors import ArgumentError, FormatError
from .select import Selector, patterns

__all__ = ["Method", "METHODS", "Stage", "stages", "load", "methods_of", "require_data_free"]


@dataclass(frozen=True)
class Method:
    """A recipe method: the family that runs it, the keys it takes (besides method, targets
    and ignore), and whether it needs calibration data."""
    family: str
    keys: tuple
    doc: str
    calibrated: bool = False


METHODS = {
    # pruning: litecomp.prune.prune_state_dict
    "magnitude": Method("prune", ("sparsity", "amount", "n", "m", "granularity", "axis",
                                  "norm", "block_shape"),
                        "prune the smallest |w|: per tensor, per row, per channel, in blocks, "
                        "globally or N:M"),
    "random": Method("prune", ("sparsity", "amount", "granularity", "axis", "seed"),
                     "prune entries (or channels) at random, a fixed seed"),
    # quantization: litecomp.quant.quantize_state_dict
    "rtn": Method("quant", ("bits", "group_size", "scheme", "axis", "activations"),
                  "round-to-nearest uniform quantization (litecomp.quant.quantize); "
                  "activations: 'int8'/'fp8' for W8A8 exports"),
    "fp8": Method("quant", ("axis", "activations"),
                  "float8 e4m3 weights, one scale per output channel (axis 0) or tensor"),
    "gguf": Method("quant", ("qtype",),
                   "GGUF blocks (Q8_0, Q4_0, ..., Q2_K..Q6_K) for compress --format gguf"),
    "nf4": Method("quant", ("block_size", "double_quant"), "bitsandbytes NF4, blockwise absmax"),
    "fp4": Method("quant", ("block_size", "double_quant"), "bitsandbytes FP4, blockwise absmax"),
    "kmeans": Method("quant", ("bits", "axis", "sparse", "keep_zeros"),
                     "k-means weight sharing (2**bits values per tensor or channel)"),
    # calibrated (litecomp.calib.apply_stage with Hessians, litecomp.torch.oneshot)
    "gptq": Method("quant", ("bits", "group_size", "scheme", "act_order", "static_groups",
                             "damp", "block_size"),
                   "GPTQ: quantize column by column, error spread by the inverse Hessian",
                   calibrated=True),
    "sparsegpt": Method("prune", ("sparsity", "n", "m", "block_size", "damp", "bits",
                                  "group_size", "scheme"),
                        "SparseGPT: OBS pruning with weight updates; with bits, also quantize",
                        calibrated=True),
    "wanda": Method("prune", ("sparsity", "n", "m"),
                    "Wanda: prune the lowest |w| * sqrt(mean x^2) per output row, or N:M",
                    calibrated=True),
    "awq": Method("quant", ("bits", "group_size", "scheme", "grid", "clip", "mappings"),
                  "AWQ: per-input-channel scales from activations (folded into the preceding "
                  "op), clipping search, then round-to-nearest", calibrated=True),
    "smoothquant": Method("smooth", ("alpha", "mappings"),
                          "SmoothQuant: move activation outliers into the weights (s = "
                          "max|x|^a / max|w|^(1-a), folded into the preceding op)",
                          calibrated=True),
    # structured shrinking: litecomp.shrink.shrink_state_dict
    "shrink_ffn": Method("shrink", ("sparsity", "amount", "criterion", "granularity",
                                    "round_to"), "remove FFN units (litecomp.shrink.ffn)"),
    "shrink_heads": Method("shrink", ("sparsity", "amount", "criterion", "granularity",
                                      "round_to", "gqa", "attention"),
                           "remove attention heads, GQA-aware (litecomp.shrink.heads)"),
    "shrink_hidden": Method("shrink", ("sparsity", "amount", "criterion", "round_to"),
                            "remove residual-stream channels (litecomp.shrink.hidden)"),
    "shrink_vocab": Method("shrink", ("keep_ids", "token_ids", "vocab_size"),
                           "keep only some vocabulary ids (litecomp.shrink.vocab)"),
    "lowrank": Method("shrink", ("rank", "energy", "budget", "algorithm", "oversample",
                                 "power_iters", "seed"),
                      "factorize Linear weights by truncated SVD (litecomp.lowrank)"),
}

_COMMON = ("method", "targets", "ignore")


@dataclass(frozen=True)
class Stage:
    """One step of a recipe: ``method`` applied to the tensors ``targets`` / ``ignore``
    select, with the method's ``options``."""
    method: str
    targets: Optional[tuple] = None
    ignore: tuple = ()
    options: dict = field(default_factory=dict)
    index: int = 0

    @property
    def family(self) -> str:
        return METHODS[self.method].family

    @property
    def calibrated(self) -> bool:
        """Whether the method needs calibration data (Hessians or activations)."""
        return METHODS[self.method].calibrated

    @property
    def selector(self) -> Selector:
        return Selector(self.targets, self.ignore)

    def get(self, key, default=None):
        return self.options.get(key, default)

    def where(self) -> str:
        """How error messages name this stage."""
        return f"recipe[{self.index}]"

    def as_dict(self) -> dict:
        d = {"method": self.method}
        if self.targets is not None:
            d["targets"] = list(self.targets)
        if self.ignore:
            d["ignore"] = list(self.ignore)
        d.update(self.options)
        return d


def _stage(d, i) -> Stage:
    where = f"recipe[{i}]"
    if isinstance(d, Stage):
        return Stage(d.method, d.targets, d.ignore, dict(d.options), i)
    if not isinstance(d, dict):
        raise ArgumentError(f"{where}: expected a stage dict with a 'method', got "
                            f"{type(d).__name__}")
    method = d.get("method")
    if method is None:
        raise ArgumentError(f"{where}: a stage needs a 'method' (one of "
                            f"{', '.join(METHODS)})")
    if not isinstance(method, str) or method not in METHODS:
        raise ArgumentError(f"{where}: unknown method {method!r}; known: "
                            f"{', '.join(METHODS)}")
    spec = METHODS[method]
    for key in d:
        if key not in _COMMON and key not in spec.keys:
            raise ArgumentError(f"{where}: unknown key {key!r} for method {method!r}; it "
                                f"takes {', '.join(spec.keys)}")
    targets = patterns(d.get("targets"), f"{where}.targets")
    ignore = patterns(d.get("ignore"), f"{where}.ignore") or ()
    options = {k: v for k, v in d.items() if k not in _COMMON}
    return Stage(method, targets, ignore, options, i)


def load(path) -> list:
    """The recipe stored in a ``.json``, ``.yaml`` or ``.yml`` file (YAML needs PyYAML)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ArgumentError(f"recipe: cannot read {path!r} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"recipe: {path!r} is not UTF-8 text ({exc})") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ArgumentError("recipe: reading YAML needs PyYAML (pip install pyyaml), or "
                                "give the recipe as .json") from None
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, RecursionError) as exc:
            raise FormatError(f"recipe: {path!r} is not valid YAML ({exc})") from None
    else:
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise FormatError(f"recipe: {path!r} is not valid JSON ({exc})") from None
    if isinstance(data, dict) and "stages" in data and "method" not in data:
        data = data["stages"]
    return data


def stages(recipe, *, family=None) -> list:
    """The recipe as a list of checked ``Stage`` objects.

    ``recipe``: a stage dict, a list of them, or a path to a .json/.yaml file.  With
    ``family`` ("prune", "quant", ...) every stage must belong to it.
    """
    if isinstance(recipe, (str, os.PathLike)):
        recipe = load(recipe)
    if isinstance(recipe, (dict, Stage)):
        recipe = [recipe]
    if not isinstance(recipe, (list, tuple)) or not recipe:
        raise ArgumentError("recipe: expected a stage dict or a non-empty list of stages")
    out = [_stage(d, i) for i, d in enumerate(recipe)]
    if family is not None:
        for s in out:
            if s.family != family:
                raise ArgumentError(
                    f"{s.where()}: method {s.method!r} is a {s.family} method, not {family}; "
                    f"{family} methods: {', '.join(methods_of(family))}")
    return out


def require_data_free(plan, where="this workflow") -> None:
    """ArgumentError for the first stage whose method needs calibration data."""
    for s in plan:
        if s.calibrated:
            raise ArgumentError(
                f"{s.where()}: method {s.method!r} needs calibration data, which {where} "
                "does not have; run it with litecomp.calib.apply_stage(state_dict, stage, "
                "hessians) (or `--hessians` on the command line) or litecomp.torch.oneshot")


def methods_of(family) -> list:
    """The method names of one family, in table order."""
    return [m for m, spec in METHODS.items() if spec.family == family]
