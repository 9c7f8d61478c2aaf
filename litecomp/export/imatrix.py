"""llama.cpp importance matrices in its GGUF imatrix format (``general.type = "imatrix"``):
per weight ``<name>.in_sum2`` (F32, the sum over calibration tokens of each input feature
squared) and ``<name>.counts`` (F32, the number of tokens), plus ``imatrix.datasets``,
``imatrix.chunk_count`` and ``imatrix.chunk_size``.  The importance weights a K-quant
quantizer takes are ``in_sum2 / counts`` (1 where a count is 0), the mean of x^2 --
``litecomp.prune.scores.ActivationStats`` computes the same sums, so calibration statistics
collected for Wanda serve here too.

>>> import os, tempfile, numpy as np
>>> from litecomp.prune.scores import ActivationStats
>>> st = ActivationStats(4); st.update(np.array([[1.0, 2, 0, 1], [3, 0, 0, 1]], np.float32))
>>> p = os.path.join(tempfile.mkdtemp(), "imatrix.gguf")
>>> save(p, {"blk.0.attn_q.weight": st}, datasets=["calib.txt"]) == p
True
>>> load(p)["blk.0.attn_q.weight"].tolist()
[5.0, 2.0, 0.0, 1.0]
"""

import os

import numpy as np

from ..errors import ArgumentError, FormatError

__all__ = ["load", "save", "weights_of"]


def weights_of(sums, count):
    """The importance weights of one weight: sums / count (1 where count is 0)."""
    sums = np.asarray(sums, np.float32).reshape(-1)
    return sums / np.float32(count) if count > 0 else np.ones_like(sums)


def save(path, stats, *, datasets=(), chunk_count=0, chunk_size=0):
    """Write ``stats`` = {tensor name: ActivationStats, or (sums, count)} as a GGUF imatrix
    file (names as the GGUF model file spells them, e.g. ``blk.0.attn_q.weight``)."""
    from .ggufmodel import gguf_file
    if not isinstance(stats, dict) or not stats:
        raise ArgumentError("stats: expected a non-empty dict of name -> ActivationStats or "
                            "(sums, count)")
    arrays = {}
    for name, st in stats.items():
        sums, count = (st.sumsq, st.count) if hasattr(st, "sumsq") else st
        arrays[f"{name}.in_sum2"] = np.asarray(sums, np.float32).reshape(1, -1)
        arrays[f"{name}.counts"] = np.asarray([[count]], np.float32)

    def fill(w):
        w.kv_data[0].pop("general.architecture", None)  # an imatrix has no architecture
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", [str(d) for d in datasets])
        w.add_uint32("imatrix.chunk_count", int(chunk_count))
        w.add_uint32("imatrix.chunk_size", int(chunk_size))
        for k, a in arrays.items():
            w.add_tensor_info(k, a.shape, a.dtype, a.nbytes)
    return gguf_file(path, "", fill, ((k, lambda a=a: a) for k, a in arrays.items()))


def load(path) -> dict:
    """{tensor name: float32 importance weights (in_sum2 / counts)} of a GGUF imatrix file.
    With several experts (n_mat > 1) the rows are concatenated, as llama.cpp does."""
    import gguf
    try:
        r = gguf.GGUFReader(os.fspath(path))
    except (OSError, ValueError) as exc:
        raise FormatError(f"imatrix: cannot read {os.fspath(path)!r} as GGUF ({exc})") from None
    kind = r.fields.get("general.type")
    if kind is None or bytes(kind.parts[kind.data[0]]).decode() != "imatrix":
        raise FormatError(f"imatrix: {os.fspath(path)!r} is not a GGUF imatrix file "
                          "(general.type is not 'imatrix')")
    tensors = {t.name: np.asarray(t.data, np.float32) for t in r.tensors}
    out = {}
    for key, sums in tensors.items():
        if not key.endswith(".in_sum2"):
            continue
        name = key[:-len(".in_sum2")]
        counts = tensors.get(f"{name}.counts")
        if counts is None:
            raise FormatError(f"imatrix: {name}.in_sum2 has no {name}.counts")
        sums = sums.reshape(counts.size, -1)
        out[name] = np.concatenate([weights_of(s, c) for s, c in zip(sums, counts.ravel())])
    return out
