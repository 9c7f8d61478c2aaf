"""State-dict pruning by recipe: ``prune_state_dict(state_dict, recipe)``.

Each stage of the recipe (``litecomp.recipe``) names a pruning method, the tensors it
applies to (``targets`` / ``ignore``; default every float tensor with ``min_ndim`` or more
dimensions) and the method's keys:

- ``magnitude``: prune the smallest |w|. ``sparsity`` (fraction) -- or torch's ``amount``
  (int count or float fraction) -- with ``granularity`` one of ``"tensor"`` (default),
  ``"row"`` (each output row its own fraction), ``"channel"`` (whole slices along ``axis``,
  default 0, ranked by their ``norm``, default 2), ``"block"`` (tiles of ``block_shape``
  ranked by ``norm``) or ``"global"`` (one threshold over every selected tensor); or ``n``
  and ``m`` for N:M sparsity (``n`` of every ``m`` consecutive entries along ``axis``,
  default the last, are pruned).
- ``random``: ``sparsity`` / ``amount``, ``granularity`` ``"tensor"`` or ``"channel"``
  (``axis``), ``seed``.

Stages run in order on the result of the previous ones; masks combine (a weight pruned once
stays pruned).

>>> import numpy as np
>>> sd = {"a.weight": np.arange(1.0, 9.0).reshape(2, 4), "a.bias": np.ones(2)}
>>> pruned, masks = prune_state_dict(sd, {"method": "magnitude", "sparsity": 0.5})
>>> pruned["a.weight"].tolist(), list(masks)
([[0.0, 0.0, 0.0, 0.0], [5.0, 6.0, 7.0, 8.0]], ['a.weight'])
"""

import numbers

import numpy as np

from .. import dtypes as _dt
from ..errors import ArgumentError
from ..recipe import require_data_free, stages as _stages
from ..select import select

GRANULARITIES = {"magnitude": ("tensor", "row", "channel", "block", "global"),
                 "random": ("tensor", "channel")}


def _amount(stage):
    """The stage's amount in torch's terms: ``sparsity`` (a fraction, as a float) or
    ``amount`` (as given)."""
    where = stage.where()
    has_s, has_a = "sparsity" in stage.options, "amount" in stage.options
    if has_s and has_a:
        raise ArgumentError(f"{where}: give sparsity or amount, not both")
    if has_a:
        return stage.options["amount"]
    if not has_s:
        raise ArgumentError(f"{where}: method {stage.method!r} needs sparsity (a fraction)")
    s = stage.options["sparsity"]
    if isinstance(s, bool) or not isinstance(s, numbers.Real) or not 0.0 <= float(s) <= 1.0:
        raise ArgumentError(f"{where}.sparsity: expected a fraction in [0, 1], got {s!r}")
    return float(s)


def _candidates(sd, min_ndim):
    return [k for k, v in sd.items()
            if isinstance(v, np.ndarray) and _dt.name_of(v.dtype) in _dt.WEIGHT_DTYPES
            and v.ndim >= min_ndim]


def _stage_masks(stage, tensors):
    """{name: new mask} for one stage over the selected tensors."""
    from . import (block, global_unstructured, l1_unstructured, ln_structured, nm, per_row,
                   random_structured, random_unstructured)
    where, o = stage.where(), stage.options
    if stage.method == "magnitude" and ("n" in o or "m" in o):
        if "sparsity" in o or "amount" in o or o.get("granularity", "tensor") != "tensor":
            raise ArgumentError(f"{where}: n/m (N:M sparsity) goes without sparsity, amount "
                                "or granularity")
        n, m, axis = o.get("n", 2), o.get("m", 4), o.get("axis", -1)
        return {k: nm(w, n, m, axis=axis) for k, w in tensors.items()}
    amount = _amount(stage)
    gran = o.get("granularity", "tensor")
    if gran not in GRANULARITIES[stage.method]:
        raise ArgumentError(f"{where}.granularity: {gran!r} is not one of "
                            f"{', '.join(GRANULARITIES[stage.method])}")
    axis, norm = o.get("axis", 0), o.get("norm", 2)
    if stage.method == "random":
        seed = o.get("seed", 0)
        if gran == "channel":
            return {k: random_structured(w, amount, axis, seed=seed) for k, w in tensors.items()}
        return {k: random_unstructured(w, amount, seed=seed) for k, w in tensors.items()}
    if gran == "global":
        return global_unstructured(tensors, amount)
    if gran == "row":
        return {k: per_row(w, amount) for k, w in tensors.items()}
    if gran == "channel":
        return {k: ln_structured(w, amount, norm, axis) for k, w in tensors.items()}
    if gran == "block":
        shape = o.get("block_shape", (1, 4))
        return {k: block(w, amount, tuple(shape), norm=norm) for k, w in tensors.items()}
    return {k: l1_unstructured(w, amount) for k, w in tensors.items()}


def prune_state_dict(state_dict, recipe, *, min_ndim=2):
    """Prune the tensors a recipe selects; returns ``(pruned state dict, {name: mask})``.

    The input is not changed.  A torch-pruned checkpoint (``X_orig`` + ``X_mask``) is baked
    first.  Tensors with fewer than ``min_ndim`` dimensions (biases, norms) are never pruned,
    even when a pattern names them.  Masks are bool, True = keep, the product of every
    stage's mask.
    """
    from . import apply, bake
    plan = _stages(recipe, family="prune")
    require_data_free(plan, "prune_state_dict")
    out = bake(state_dict)
    masks = {}
    for stage in plan:
        names = select(_candidates(out, min_ndim), stage.targets, stage.ignore,
                       what=f"float tensors with {min_ndim}+ dimensions")
        if not names:
            raise ArgumentError(f"{stage.where()}: selects no tensor to prune")
        new = _stage_masks(stage, {k: out[k] for k in names})
        for k, m in new.items():
            out[k] = apply(out[k], m)
            masks[k] = m if k not in masks else masks[k] & m
    return out, masks
