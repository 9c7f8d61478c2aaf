"""Pruning interop with torch.nn.Module: litecomp masks through torch's own prune hooks,
masks read back from a pruned module, and the Wanda activation statistic via forward hooks.
"""

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as tprune

from ..errors import ArgumentError, ShapeError
from ..io.atomic import deferred_interrupt
from ..prune.scores import ActivationStats


def _split(module, name):
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = module.get_submodule(owner_name) if owner_name else module
    except AttributeError:
        raise ArgumentError(f"masks: {name!r} names no submodule of the model") from None
    return owner, attr


def apply_masks(module: nn.Module, masks: dict) -> nn.Module:
    """Prune ``module`` with litecomp masks ({"fc.weight": bool array}) through
    ``torch.nn.utils.prune.custom_from_mask``: the module gets ``weight_orig`` +
    ``weight_mask`` and a forward pre-hook, so fine-tuning keeps pruned weights at zero.
    A parameter pruned before keeps its old mask too (torch combines them).  Every mask is
    checked before the first is applied, and Ctrl-C is held off while they are, so the
    module is never left pruned halfway."""
    todo = []
    for name, mask in masks.items():
        owner, attr = _split(module, name)
        current = getattr(owner, attr, None)
        if not isinstance(current, torch.Tensor):
            raise ArgumentError(f"masks: {name!r} is not a tensor of the model")
        m = np.asarray(mask)
        if tuple(m.shape) != tuple(current.shape):
            raise ShapeError(f"masks[{name!r}]: shape {m.shape} does not match the "
                             f"parameter's {tuple(current.shape)}")
        todo.append((owner, attr, torch.from_numpy(np.ascontiguousarray(m != 0)).to(
            current.device)))
    with deferred_interrupt():
        for owner, attr, t in todo:
            tprune.custom_from_mask(owner, attr, mask=t)
    return module


def masks_from_module(module: nn.Module) -> dict:
    """{"fc.weight": bool mask} for every parameter pruned through torch.nn.utils.prune."""
    out = {}
    for mod_name, mod in module.named_modules():
        for buf_name, buf in mod.named_buffers(recurse=False):
            if buf_name.endswith("_mask") and hasattr(mod, buf_name[:-5] + "_orig"):
                key = (mod_name + "." if mod_name else "") + buf_name[:-5]
                out[key] = (buf.detach().cpu() != 0).numpy()
    return out


def activation_stats(model: nn.Module, batches, layers=None, *, targets=None,
                     ignore=None) -> dict:
    """Run ``model`` on every batch (no grad) and collect, for each Linear layer, the Wanda
    statistic of its input: {layer name: ActivationStats} (``.mean_sq`` per input column).

    batches: an iterable of model inputs (a tensor, a tuple of positional arguments, or a
    dict of keyword arguments).  targets / ignore: the modules to watch
    (``litecomp.select`` patterns or class names; default every nn.Linear); ``layers``, a
    list of exact module names, is the older spelling.  A MultiheadAttention's
    ``out_proj``, whose forward attention never calls, is observed too (its input is
    recomputed: ``litecomp.torch.capture``).  Only layers that ran appear.
    """
    from . import to_numpy
    from .select import select_modules
    if layers is None:
        watched = dict(select_modules(model, targets, ignore))
    else:
        watched = {}
        for n in layers:
            try:
                watched[n] = model.get_submodule(n)
            except AttributeError:
                raise ArgumentError(f"layers: {n!r} is not a submodule of the model") from None
    from .capture import Capture, run_batch, taps_for
    stats = {}

    def observe(tap, x):
        if x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            x = x.float()
        a = to_numpy(x.contiguous())
        if tap.key not in stats:
            stats[tap.key] = ActivationStats(a.shape[-1])
        stats[tap.key].update(a)

    lin = [(n, m) for n, m in watched.items() if isinstance(m, nn.Linear)]
    taps = taps_for(model, lin)
    with Capture(model, taps, observe), torch.no_grad():
        for b in batches:
            run_batch(model, b)
    return stats
