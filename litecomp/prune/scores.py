"""Pruning criteria as score functions: a lower score is pruned first.

Each returns an array of w's shape to pass as ``importance_scores=``.  ``ActivationStats``
accumulates the Wanda activation statistic (mean of x^2 per input column) over any number
of calibration batches with a C kernel, in float64, in a fixed order.
"""

import numpy as np

from .. import _C
from .. import dtypes as _dt
from .._check import as_array, as_kernel_input
from ..errors import ArgumentError, ShapeError


def _float(a, name):
    a = as_array(a, name)
    if _dt.name_of(a.dtype) in ("float16", "bfloat16"):
        a = a.astype(np.float32)
    elif a.dtype not in (np.float32, np.float64):
        if a.dtype.kind not in "biuf":
            raise ArgumentError(f"{name}: dtype {a.dtype} is not a real number type")
        a = a.astype(np.float64)
    return a


def magnitude(w) -> np.ndarray:
    """|w| (what l1_unstructured uses when no scores are given)."""
    return np.abs(_float(w, "w"))


def taylor(w, grad) -> np.ndarray:
    """First-order Taylor importance |w * g| (g: the loss gradient for w)."""
    w, g = _float(w, "w"), _float(grad, "grad")
    if w.shape != g.shape:
        raise ShapeError(f"grad: shape {g.shape} does not match w's {w.shape}")
    return np.abs(w * g)


def random(shape, *, seed=0) -> np.ndarray:
    """Random scores (uint64 hashes from litecomp.random; reproducible from ``seed``)."""
    from .. import random as _random
    return _random.bits(shape, seed=seed)


class ActivationStats:
    """Running Wanda statistic for one Linear input: a[j] = mean over tokens of x[:, j]^2.

    >>> import numpy as np
    >>> st = ActivationStats(2)
    >>> st.update(np.array([[1.0, 2.0], [3.0, 0.0]], np.float32))
    >>> st.update(np.array([[1.0, 2.0]]))
    >>> st.count, st.mean_sq
    (3, array([3.66666667, 2.66666667]))
    """

    def __init__(self, features: int):
        if isinstance(features, bool) or not isinstance(features, (int, np.integer)) \
                or features < 1:
            raise ArgumentError(f"features: expected a positive int, got {features!r}")
        self.features = int(features)
        self.sumsq = np.zeros(self.features, np.float64)
        self.count = 0

    def update(self, x) -> None:
        """Add a batch [..., features] (any float dtype; all leading dims are tokens)."""
        k = as_kernel_input(x, "x")
        a = k.raw
        if a.ndim < 1 or a.shape[-1] != self.features:
            raise ShapeError(f"x: last dimension must be {self.features}, got shape "
                             f"{k.array.shape}")
        rows = a.size // self.features
        _C.accumulate_sumsq(a.reshape(rows, self.features), k.code, self.sumsq)
        self.count += rows

    @property
    def mean_sq(self) -> np.ndarray:
        """Mean of x^2 per feature (float64); zeros before any update."""
        return self.sumsq / self.count if self.count else np.zeros_like(self.sumsq)

    @property
    def norm(self) -> np.ndarray:
        """sqrt(mean x^2) per feature: Wanda's ||X_j|| up to a constant factor."""
        return np.sqrt(self.mean_sq)


def activation_stats(batches, features=None) -> ActivationStats:
    """ActivationStats over an iterable of [..., features] batches."""
    st = None
    for b in batches:
        b = as_array(b, "batches")
        if st is None:
            st = ActivationStats(features or b.shape[-1])
        st.update(b)
    if st is None:
        raise ArgumentError("batches: is empty")
    return st


def wanda(w, stats) -> np.ndarray:
    """Wanda score |W[r, j]| * sqrt(a[j]) for a [out, in] weight; ``stats`` is an
    ActivationStats or the per-column mean of x^2.  Compare per output row
    (``litecomp.prune.per_row``), as Wanda does."""
    w = _float(w, "w")
    a = stats.mean_sq if isinstance(stats, ActivationStats) else _float(stats, "stats")
    if w.ndim != 2 or a.shape != (w.shape[1],):
        raise ShapeError(f"stats: expected {w.shape[1] if w.ndim == 2 else '?'} per-column "
                         f"values for w of shape {w.shape}, got shape {a.shape}")
    return np.abs(w) * np.sqrt(a).astype(w.dtype)
