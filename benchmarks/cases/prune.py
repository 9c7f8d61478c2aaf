"""Pruning: exact-k masks, N:M masks, bake and sparse compression beside torch / a copy."""

import numpy as np

import litecomp
from litecomp import _C, prune, sparse

from ..harness import Run, case, missing, optional_import

FC = (98631, 512)


def _fc(quick):
    return litecomp.random.uniform((1000, 512) if quick else FC, -0.044, 0.044, seed=7)


def _torch_prune():
    torch = optional_import("torch")
    if torch is None:
        return None, None
    from torch.nn.utils import prune as tprune
    return torch, tprune


def _holder(torch, a):
    """A bare module whose parameter shares memory with the NumPy array."""
    h = torch.nn.Module()
    h.weight = torch.nn.Parameter(torch.from_numpy(a), requires_grad=False)
    return h


def _check_up_to_ties(scores):
    def check(ours, theirs):
        theirs = theirs.weight_mask.numpy() != 0 if hasattr(theirs, "weight_mask") else theirs
        assert ours.sum() == theirs.sum(), (ours.sum(), theirs.sum())
        diff = ours != theirs
        if diff.any():
            assert (np.abs(scores[diff]) == np.abs(scores[~ours]).max()).all()
    return check


@case("l1_unstructured 50%, fc.weight 98631x512 f32", group="prune", repeats=3)
def l1(quick):
    w = _fc(quick)
    torch, tprune = _torch_prune()
    anchor = missing("torch.nn.utils.prune.l1_unstructured", "torch")
    if torch is not None:
        def torch_l1():
            h = _holder(torch, w)
            tprune.l1_unstructured(h, "weight", 0.5)
            return h
        anchor = ("torch.nn.utils.prune.l1_unstructured", torch_l1)
    # the kernel reads the weight twice (the sampled bracket's counting pass, then the mask
    # pass) and writes a 1-byte mask
    return Run(litecomp=lambda: prune.l1_unstructured(w, 0.5), anchor=anchor,
               bytes=2 * w.nbytes + w.size, check=_check_up_to_ties(w),
               notes="torch also builds weight_orig * mask; ties: counts equal, "
                     "disagreements only at the threshold")


def _global_case(sd):
    weights = {k: v for k, v in sd.items() if v.ndim >= 2}
    n = sum(v.size for v in weights.values())
    torch, tprune = _torch_prune()
    anchor = missing("torch.nn.utils.prune.global_unstructured", "torch")
    if torch is not None:
        def torch_global():
            params = [(_holder(torch, v), "weight") for v in weights.values()]
            tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured,
                                       amount=0.5)
            return [h.weight_mask.numpy() != 0 for h, _ in params]
        anchor = ("torch.nn.utils.prune.global_unstructured (L1Unstructured)", torch_global)
    total = sum(v.nbytes for v in weights.values())
    def check(ours, theirs):                 # the same count; differences only at the tie
        flat_s = np.concatenate([np.abs(v).ravel() for v in weights.values()])
        flat_o = np.concatenate([ours[k].ravel() for k in weights])
        _check_up_to_ties(flat_s)(flat_o, np.concatenate([t.ravel() for t in theirs]))
    return Run(litecomp=lambda: prune.global_unstructured(weights, 0.5), anchor=anchor,
               bytes=2 * total + n, check=check,
               notes=f"{n / 1e6:.0f}M weights; litecomp's extra memory is the masks (1 byte "
                     "per parameter); torch concatenates scores and builds float masks")


@case("global_unstructured 50%, example model weights, vocab 8192 (33M)", group="prune",
      repeats=1)
def global_small(quick):
    sd = litecomp.examples.tiny_decoder_lm() if quick else \
        litecomp.examples.decoder_lm(vocab=8192)
    return _global_case(sd)


@case("global_unstructured 50%, full example model weights (126M)", group="prune",
      repeats=3)
def global_full(quick):
    # torch takes 15-45 s and 6.6 GB here: one warm-up (which also gives its peak memory)
    # and three timed calls, about a minute in all.
    sd = litecomp.examples.tiny_decoder_lm() if quick else litecomp.examples.decoder_lm()
    return _global_case(sd)


@case("per_row (Wanda groups) 50%, fc.weight 98631x512 f32", group="prune", repeats=3)
def rows(quick):
    w = _fc(quick)
    torch = optional_import("torch")
    anchor = missing("torch.topk per row", "torch")
    if torch is not None:
        t = torch.from_numpy(w)

        def torch_rows():
            idx = torch.topk(t.abs(), w.shape[1] // 2, dim=1, largest=False).indices
            return torch.ones_like(t, dtype=torch.bool).scatter_(1, idx, False)
        anchor = ("torch.topk(|W|, k, dim=1) + scatter", torch_rows)
    def check(ours, theirs):
        theirs = theirs.numpy()
        for r in np.flatnonzero((ours != theirs).any(1)):   # only ties may differ
            _check_up_to_ties(w[r])(ours[r], theirs[r])
    return Run(litecomp=lambda: prune.per_row(w, 0.5), anchor=anchor,
               bytes=w.nbytes + w.size, check=check)


@case("nm 2:4 mask, fc.weight 98631x512 f32", group="prune")
def nm24(quick):
    w = _fc(quick)
    dst = np.empty_like(w)
    return Run(litecomp=lambda: prune.nm(w, 2, 4),
               anchor=("memory copy of the weight (litecomp stream_copy)",
                       lambda: _C.stream_copy(dst.view(np.uint8).reshape(-1),
                                              w.view(np.uint8).reshape(-1))),
               bytes=w.nbytes + w.size, notes="read the weight, write a 1-byte mask",
               yardstick="the time of copying the weight once (no peer computes N:M masks)")


@case("bake (orig * mask), fc.weight 98631x512 f32", group="prune")
def bake(quick):
    w = _fc(quick)
    mask = prune.l1_unstructured(w, 0.5).astype(np.float32)
    sd = {"fc.weight_orig": w, "fc.weight_mask": mask}
    dst = np.empty_like(w)
    return Run(litecomp=lambda: prune.bake(sd),
               anchor=("memory copy of the weight (litecomp stream_copy)",
                       lambda: _C.stream_copy(dst.view(np.uint8).reshape(-1),
                                              w.view(np.uint8).reshape(-1))),
               bytes=3 * w.nbytes, notes="read orig and the float mask, write the product",
               yardstick="the time of copying the weight once")


@case("sparse.compress 50%-pruned fc.weight (bitmask)", group="prune")
def compress(quick):
    w = _fc(quick)
    wp = prune.apply(w, prune.l1_unstructured(w, 0.5))
    sd = {"fc.weight": wp}
    dst = np.empty_like(w)
    return Run(litecomp=lambda: sparse.compress(sd),
               anchor=("memory copy of the weight (litecomp stream_copy)",
                       lambda: _C.stream_copy(dst.view(np.uint8).reshape(-1),
                                              wp.view(np.uint8).reshape(-1))),
               bytes=2 * wp.nbytes + wp.nbytes // 2 + wp.size // 8,
               notes="two reads of the weight, write half the values and the bits",
               yardstick="the time of copying the weight once")
