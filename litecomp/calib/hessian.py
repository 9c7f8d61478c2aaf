"""Streaming layer Hessians H = 2/n * sum_t x_t x_t^T, and their checkpoint files.

``Hessian(features)`` never holds the activations: each ``update(x)`` adds ``x^T x`` of a
batch (NumPy's BLAS, float32 products for float32/16/bfloat16 input, float64 for float64)
into a float64 sum, in row chunks so a float16 batch is never copied whole.

A Hessian file is a ``.safetensors`` (or any litecomp checkpoint format) holding, per
layer, ``<layer>.hessian`` (the matrix H, float32 unless saved as float64) and
``<layer>.count`` (int64 [1], the number of tokens n).  ``<layer>`` is the weight's name
without ``.weight`` (``layers.0.mlp.up_proj``); the packed q/k/v rows of a
MultiheadAttention ``in_proj_weight`` are ``<attn>.in_proj_weight.q`` / ``.k`` / ``.v``.

>>> import numpy as np
>>> h = Hessian(3)
>>> h.update(np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]], np.float32))
>>> h.count, h.matrix[0].tolist()
(2, [1.0, 0.0, 2.0])
"""

import numpy as np

from .. import dtypes as _dt
from .._check import as_array, check_int
from ..errors import ArgumentError, FormatError, NonFiniteError, ShapeError

#: Rows converted and multiplied at a time (bounds the float32 copy of a float16 batch).
CHUNK_ROWS = 16384


class Hessian:
    """Running H = 2/n * sum x x^T for one layer input of ``features`` columns."""

    def __init__(self, features: int):
        self.features = check_int(features, "features", 1)
        self.sum = np.zeros((self.features, self.features), np.float64)
        self.count = 0

    def update(self, x) -> None:
        """Add a batch ``[..., features]`` (any float dtype; every leading index is a token)."""
        from ..core import to_float32
        a = as_array(x, "x")
        name = _dt.name_of(a.dtype)
        if name not in _dt.WEIGHT_DTYPES:
            raise ArgumentError(f"x: dtype {a.dtype} is not a float dtype "
                                f"({', '.join(_dt.WEIGHT_DTYPES)})")
        if a.ndim < 1 or a.shape[-1] != self.features:
            raise ShapeError(f"x: last dimension must be {self.features}, got shape {a.shape}")
        a = a.reshape(-1, self.features)
        for r0 in range(0, a.shape[0], CHUNK_ROWS):
            c = a[r0:r0 + CHUNK_ROWS]
            if name == "float64":
                c = np.ascontiguousarray(c)
            elif name == "float32":
                c = np.ascontiguousarray(c)
            else:
                c = to_float32(c)
            p = c.T @ c
            if not np.isfinite(np.diagonal(p)).all():
                raise NonFiniteError("x: contains NaN or inf (or values whose square "
                                     "overflows float32)")
            self.sum += p
        self.count += a.shape[0]

    @property
    def matrix(self) -> np.ndarray:
        """H = 2/n * sum x x^T as float32 (zeros before any update)."""
        return self.as_matrix(np.float32)

    def as_matrix(self, dtype=np.float32) -> np.ndarray:
        if not self.count:
            return np.zeros((self.features, self.features), dtype)
        return (self.sum * (2.0 / self.count)).astype(dtype)

    @property
    def mean_sq(self) -> np.ndarray:
        """Mean of x^2 per input column (Wanda's statistic): diag(H) / 2."""
        return np.diagonal(self.sum) / self.count if self.count else np.zeros(self.features)

    def merge(self, other: "Hessian") -> "Hessian":
        """Add another Hessian of the same layer (e.g. captured on another machine)."""
        if not isinstance(other, Hessian) or other.features != self.features:
            raise ShapeError("other: expected a Hessian with the same number of features")
        self.sum += other.sum
        self.count += other.count
        return self

    @classmethod
    def from_matrix(cls, H, count) -> "Hessian":
        """The Hessian whose ``matrix`` is H after ``count`` tokens (what files store)."""
        H = as_array(H, "hessian")
        if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] < 1:
            raise FormatError(f"hessian: expected a square matrix, got shape {H.shape}")
        count = int(np.asarray(count).ravel()[0]) if np.size(count) else -1
        if count < 1:
            raise FormatError(f"count: expected a positive token count, got {count}")
        h = cls(H.shape[0])
        h.sum = np.asarray(H, np.float64) * (count / 2.0)
        h.count = count
        return h

    def to_state_dict(self, layer: str, dtype=np.float32) -> dict:
        return {f"{layer}.hessian": self.as_matrix(dtype),
                f"{layer}.count": np.asarray([self.count], np.int64)}

    def save(self, path, layer="layer", *, dtype=np.float32) -> str:
        """Write this Hessian alone as ``<layer>.hessian`` + ``<layer>.count``."""
        return save_hessians({layer: self}, path, dtype=dtype)

    def __repr__(self):
        return f"Hessian(features={self.features}, count={self.count})"


def save_hessians(hessians: dict, path, *, dtype=np.float32) -> str:
    """Write {layer: Hessian} to ``path`` (suffix picks the format; .safetensors is the
    usual one).  ``dtype=np.float64`` keeps the sums exact for continuing later."""
    from ..io import save
    if not isinstance(hessians, dict) or not hessians:
        raise ArgumentError("hessians: expected a non-empty dict {layer: Hessian}")
    sd = {}
    for layer, h in hessians.items():
        if not isinstance(h, Hessian):
            raise ArgumentError(f"hessians[{layer!r}]: expected a Hessian, got "
                                f"{type(h).__name__}")
        if not h.count:
            raise ArgumentError(f"hessians[{layer!r}]: has seen no data")
        sd.update(h.to_state_dict(layer, dtype))
    return save(sd, path)


def load_hessians(source) -> dict:
    """{layer: Hessian} from a Hessian file (or a state dict of ``.hessian`` / ``.count``)."""
    if isinstance(source, dict):
        sd = source
    else:
        from ..io import load
        sd = load(source)
    out = {}
    for key in sd:
        if key.endswith(".hessian"):
            layer = key[:-len(".hessian")]
            if f"{layer}.count" not in sd:
                raise FormatError(f"{layer}.count: missing beside {key}")
            out[layer] = Hessian.from_matrix(sd[key], sd[f"{layer}.count"])
    if not out:
        raise FormatError("hessians: no '<layer>.hessian' entries found")
    return out
