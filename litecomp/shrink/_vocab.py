"""Vocabulary shrinking: count the ids a corpus uses (C, streaming) and keep only those rows
of the embedding and the output head."""

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_array, check_int
from ..errors import ArgumentError, DTypeError, ShapeError

_ID_DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")


def _ids(batch, name):
    a = as_array(batch, name)
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name}: token ids must be integers, got dtype {a.dtype}")
    if not a.dtype.isnative:
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a).reshape(-1)


def token_counts(token_id_batches, vocab=None, *, counts=None) -> np.ndarray:
    """How often each id occurs: int64 ``counts[id]`` over an iterable of integer arrays
    (any shape; or one array), streamed batch by batch through a parallel C kernel.

    vocab: the vocabulary size (ids must lie in [0, vocab)); None grows the counts to the
    largest id seen.  counts: an int64 array to add to (streaming over several calls).

    >>> token_counts([[1, 1, 3], [0, 1]], vocab=5)
    array([1, 3, 0, 1, 0])
    """
    if isinstance(token_id_batches, np.ndarray) or (
            isinstance(token_id_batches, (list, tuple)) and token_id_batches
            and not isinstance(token_id_batches[0], (list, tuple, np.ndarray))):
        token_id_batches = [token_id_batches]
    if counts is not None:
        if not isinstance(counts, np.ndarray) or counts.dtype != np.int64 or counts.ndim != 1 \
                or not counts.flags.c_contiguous or not counts.flags.writeable:
            raise ArgumentError("counts: expected a writeable 1-D C-contiguous int64 array")
        if vocab is not None and check_int(vocab, "vocab", 1) != counts.size:
            raise ShapeError(f"counts: has {counts.size} entries, vocab is {vocab}")
        vocab = counts.size
    elif vocab is not None:
        vocab = check_int(vocab, "vocab", 1)
        counts = np.zeros(vocab, np.int64)
    else:
        counts = np.zeros(0, np.int64)
    fixed = vocab is not None
    seen = 0
    for bi, batch in enumerate(token_id_batches):
        a = _ids(batch, f"token_id_batches[{bi}]")
        if a.size == 0:
            continue
        if not fixed:
            hi = int(a.max())
            if hi >= counts.size:
                grown = np.zeros(hi + 1, np.int64)
                grown[:counts.size] = counts
                counts = grown
        bad = _C.token_counts(a, _dt.code_of(a.dtype), counts)
        if bad >= 0:
            raise ArgumentError(f"token_id_batches[{bi}]: id {int(a[bad])} at position {bad} "
                                f"is out of range [0, {counts.size})")
        seen += a.size
    return counts


def top_ids(counts, k=None, *, min_count=1) -> np.ndarray:
    """Ids to keep, ascending: the ``k`` most frequent (ties: the lower id), or with k None
    every id counted at least ``min_count`` times.

    >>> top_ids(np.array([5, 0, 7, 5, 1]), 3)
    array([0, 2, 3])
    """
    c = as_array(counts, "counts")
    if c.ndim != 1 or c.dtype.kind not in "iu":
        raise ArgumentError(f"counts: expected a 1-D integer array, got {c.dtype} {c.shape}")
    if k is None:
        return np.flatnonzero(c >= min_count).astype(np.int64)
    k = check_int(k, "k", 1, c.size)
    order = np.argsort(-c.astype(np.int64), kind="stable")[:k]
    return np.sort(order).astype(np.int64)


def check_keep_ids(keep_ids, n):
    ids = as_array(keep_ids, "keep_ids")
    if ids.ndim != 1 or ids.size == 0:
        raise ShapeError(f"keep_ids: expected a non-empty 1-D array of ids, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        if ids.dtype.kind == "f" and np.all(ids == np.floor(ids)):
            ids = ids.astype(np.int64)
        else:
            raise DTypeError(f"keep_ids: ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= n)
    if bad.any():
        raise ArgumentError(f"keep_ids: id {int(ids[bad][0])} is out of range [0, {n}) "
                            f"({int(bad.sum())} such ids)")
    if np.unique(ids).size != ids.size:
        u, c = np.unique(ids, return_counts=True)
        raise ArgumentError(f"keep_ids: id {int(u[c > 1][0])} is listed more than once")
    return ids


def vocab(state_dict, arch=None, keep_ids=None, *, config=None):
    """Keep only the vocabulary rows ``keep_ids`` (in that order: new id i is old id
    keep_ids[i]) of the embedding and the output head and its bias, tied or not.

    ``result.id_map`` maps old ids to new ones (-1: removed).  Special token ids in a Hugging
    Face config (``pad_token_id``, ``eos_token_id``, ...) are remapped; one that is not kept
    raises.
    """
    from . import _finish, _inputs, sizes
    from .groups import Cut, resolve
    sd, a, prior = _inputs(state_dict, arch, config)
    if keep_ids is None:
        raise ArgumentError("keep_ids: expected the ids to keep (e.g. shrink.top_ids(counts, "
                            "8192))")
    before = sizes(sd, a)
    V = before["vocab"]
    ids = check_keep_ids(keep_ids, V)
    parts = resolve(sd, a.model_level(a.vocab, before["layers"]), f"{a.name} vocabulary")
    cut = Cut()
    for p in parts:
        cut.keep(p, ids)
    id_map = np.full(V, -1, np.int64)
    id_map[ids] = np.arange(ids.size)
    after = {**before, "vocab": int(ids.size)}
    res = _finish(sd, a, cut, {"vocab": ids}, before, after, id_map=id_map, prior=prior)
    for key, v in list(res.config.items()):
        if not key.endswith("_token_id") or v is None:
            continue
        vals = v if isinstance(v, list) else [v]
        if not all(isinstance(x, int) for x in vals):
            continue
        if not all(0 <= x < V for x in vals):
            continue  # already outside the vocabulary: not ours to judge
        for x in vals:
            if id_map[x] < 0:
                raise ArgumentError(f"keep_ids: the config's {key} {x} is not among the kept "
                                    "ids; add it")
        new = [int(id_map[x]) for x in vals]
        res.config[key] = new if isinstance(v, list) else new[0]
    res.arch = a.bind(res.config)
    return res
