"""Structured shrinking and low rank: shrinking the full example model beside copying its
bytes once, token counting beside numpy.bincount, randomized SVD beside numpy.linalg.svd."""

import numpy as np

import litecomp
from litecomp import lowrank, shrink

from ..harness import Run, case

CFG = {"heads": 8}


def _model(quick):
    if quick:
        return litecomp.examples.tiny_decoder_lm(), {"heads": 4}
    return litecomp.examples.decoder_lm(), CFG


def _copy_all(sd):
    return {k: v.copy() for k, v in sd.items()}


def _nbytes(sd):
    return sum(v.nbytes for v in sd.values())


@case("shrink.vocab keep 8192, full model 126M", group="shrink", repeats=5)
def vocab(quick):
    sd, cfg = _model(quick)
    keep = np.arange(0, sd["embed.weight"].shape[0], 12)[:8192]

    def check(ours, _):  # litecomp's own result against the definition (the anchor copies)
        np.testing.assert_array_equal(ours.state_dict["embed.weight"], sd["embed.weight"][keep])
    # reads the kept rows of embed/fc and writes them; the other tensors are shared
    row = sd["embed.weight"].shape[1] * 4
    return Run(litecomp=lambda: shrink.vocab(sd, "decoder_lm", keep, config=cfg),
               anchor=("copy every tensor once (numpy)", lambda: _copy_all(sd)),
               bytes=2 * 2 * len(keep) * row, check=check,
               notes="check: the kept embedding rows",
               yardstick="the time of copying the model's bytes once (single-threaded numpy)")


@case("shrink ffn 50% + heads 25%, full model 126M", group="shrink", repeats=5)
def ffn_heads(quick):
    sd, cfg = _model(quick)

    def run():
        return shrink.heads(shrink.ffn(sd, "decoder_lm", 0.5, config=cfg), None, 0.25)
    layer = [k for k in sd if ".layers." in k]
    moved = sum(sd[k].nbytes for k in layer)   # read to score, about half written back
    return Run(litecomp=run, anchor=("copy every tensor once (numpy)", lambda: _copy_all(sd)),
               bytes=int(1.5 * moved), notes=f"the layers are {moved / _nbytes(sd):.0%} of the "
                                             "model; embed/fc are shared, not copied",
               yardstick="the time of copying the model's bytes once (single-threaded numpy)")


@case("shrink vocab 8192 + ffn 50% + heads 25% + hidden 25%, full model", group="shrink",
      repeats=3)
def everything(quick):
    sd, cfg = _model(quick)
    keep = np.arange(0, sd["embed.weight"].shape[0], 12)[:8192]

    def run():
        r = shrink.vocab(sd, "decoder_lm", keep, config=cfg)
        r = shrink.heads(shrink.ffn(r, None, 0.5), None, 0.25)
        return shrink.hidden(r, None, 0.25)
    return Run(litecomp=run, anchor=("copy every tensor once (numpy)", lambda: _copy_all(sd)),
               bytes=_nbytes(sd) // 4, notes="hidden touches every remaining tensor",
               yardstick="the time of copying the model's bytes once (single-threaded numpy)")


@case("token_counts 50M ids, vocab 98631", group="shrink", repeats=5)
def counts(quick):
    n = 100_000 if quick else 50_000_000
    ids = (litecomp.random.bits(n, seed=3) % np.uint64(98631)).astype(np.int32)

    def check(ours, theirs):
        np.testing.assert_array_equal(ours, theirs)
    return Run(litecomp=lambda: shrink.token_counts([ids], 98631),
               anchor=("numpy.bincount", lambda: np.bincount(ids, minlength=98631)),
               bytes=ids.nbytes, check=check)


def _matrix(n, k):
    # a trained-weight-like spectrum: power law over a rank-k/2 part plus a noise floor
    r = max(8, n // 4)
    g = litecomp.random.normal((n, r), seed=1)
    h = litecomp.random.normal((r, n), seed=2)
    s = (np.arange(1, r + 1) ** -0.6).astype(np.float32)
    return ((g * s) @ h) / np.sqrt(n) + 0.002 * litecomp.random.normal((n, n), seed=3)


@case("randomized SVD rank 512 of 4096x4096 f32", group="shrink", repeats=1)
def rsvd(quick):
    n, k = (512, 64) if quick else (4096, 512)
    w = _matrix(n, k)

    def full():
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        return np.linalg.norm(w - (u[:, :k] * s[:k]) @ vt[:k]) / np.linalg.norm(w)

    def check(ours, best):
        assert ours.error <= best * 1.01, (ours.error, best)
    return Run(litecomp=lambda: lowrank.svd(w, k, algorithm="randomized"),
               anchor=("numpy.linalg.svd (full, then truncated)", full),
               bytes=w.nbytes * (2 * 4 + 3), check=check,
               notes="check: rank-k error within 1% of the optimal (numpy's)")
