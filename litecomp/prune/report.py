"""Sparsity reports per tensor and in total."""

from dataclasses import dataclass

import numpy as np

from .. import dtypes as _dt
from .._check import as_array
from .._table import format_count, render_table
from ..errors import ArgumentError


@dataclass(frozen=True)
class SparsityReport:
    """Rows of (name, numel, zeros); for masks, "zeros" are the pruned entries."""
    rows: tuple

    @property
    def numel(self) -> int:
        return sum(r[1] for r in self.rows)

    @property
    def zeros(self) -> int:
        return sum(r[2] for r in self.rows)

    @property
    def total(self) -> float:
        """Fraction of zeros over every tensor (0.0 when empty)."""
        return self.zeros / self.numel if self.numel else 0.0

    def __getitem__(self, name) -> float:
        for r in self.rows:
            if r[0] == name:
                return r[2] / r[1] if r[1] else 0.0
        raise KeyError(name)

    def __str__(self) -> str:
        body = [[n, format_count(t), format_count(z), f"{(z / t if t else 0):.2%}"]
                for n, t, z in self.rows]
        body.append(["total", format_count(self.numel), format_count(self.zeros),
                     f"{self.total:.2%}"])
        return render_table(["name", "numel", "zeros", "sparsity"], body,
                            align=["<", ">", ">", ">"])


def _zeros(a, name) -> int:
    a = as_array(a, name)
    if _dt.name_of(a.dtype) in _dt.FLOAT_DTYPES:
        from ..core import tensor_stats
        return tensor_stats(a).zeros  # one parallel pass; -0.0 counts as zero
    if a.dtype.kind not in "biuf":
        raise ArgumentError(f"{name}: dtype {a.dtype} has no notion of zero here")
    return int(a.size - np.count_nonzero(a))


def sparsity(x) -> SparsityReport:
    """Zeros (or pruned mask entries) per tensor and in total, for an array or a dict of them.

    >>> import numpy as np, litecomp
    >>> r = litecomp.prune.sparsity({"a": np.array([0.0, 1.0]), "b": np.zeros(2, bool)})
    >>> r.total, r["a"]
    (0.75, 0.5)
    """
    items = x.items() if isinstance(x, dict) else [("array", x)]
    return SparsityReport(tuple((name, int(np.size(a)), _zeros(a, name)) for name, a in items))
