"""Sensitivity analysis: prune one layer at a time at several sparsities and record a
user metric, to see which layers tolerate pruning."""

from dataclasses import dataclass

import numpy as np

from .._table import render_table
from ..errors import ArgumentError
from ..select import select

CRITERIA = ("l1", "random", "per_row", "l2_structured")


@dataclass
class SensitivityTable:
    """values[i, j] = evaluate(state dict with layers[i] pruned to sparsities[j])."""
    layers: list
    sparsities: tuple
    values: np.ndarray
    baseline: float

    def __str__(self) -> str:
        return self.to_text()

    def to_text(self, fmt="{:.4g}") -> str:
        headers = ["layer"] + [f"{s:.0%}" if s * 100 == int(s * 100) else f"{s:g}"
                               for s in self.sparsities]
        rows = [[name] + [fmt.format(v) for v in self.values[i]]
                for i, name in enumerate(self.layers)]
        rows.append(["(dense baseline)"] + [fmt.format(self.baseline)] * len(self.sparsities))
        return render_table(headers, rows, align=["<"] + [">"] * len(self.sparsities))

    def plot(self, ax=None):
        """One line per layer (metric vs sparsity) with matplotlib; returns the axes."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("SensitivityTable.plot needs matplotlib: pip install "
                              "matplotlib") from exc
        if ax is None:
            _, ax = plt.subplots()
        for i, name in enumerate(self.layers):
            ax.plot(self.sparsities, self.values[i], marker="o", label=name)
        ax.axhline(self.baseline, color="gray", linestyle="--", label="dense")
        ax.set_xlabel("sparsity")
        ax.set_ylabel("metric")
        ax.legend(fontsize="small")
        return ax


def _prune_one(w, s, criterion, seed):
    from . import apply, l1_unstructured, ln_structured, per_row, random_unstructured
    if criterion == "l1":
        mask = l1_unstructured(w, s)
    elif criterion == "random":
        mask = random_unstructured(w, s, seed=seed)
    elif criterion == "per_row":
        mask = per_row(w, s)
    else:
        mask = ln_structured(w, s, 2, 0)
    return apply(w, mask)


def sensitivity(state_dict, evaluate, *, targets=None, ignore=None, layers=None,
                sparsities=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                criterion="l1", seed=0, progress=None) -> SensitivityTable:
    """Prune each layer alone at each sparsity and call ``evaluate(state_dict) -> float``.

    targets / ignore: the tensors to test (``litecomp.select`` patterns; default every
    tensor with 2 or more dimensions); ``layers``, a list of exact names, is the older
    spelling.
    criterion: 'l1', 'random', 'per_row' (Wanda-style rows by magnitude) or
    'l2_structured' (whole output rows by L2 norm).  The state dict passed to ``evaluate``
    is a shallow copy with one tensor replaced; the caller's dict is not changed.
    progress: a tqdm bar appears when the run takes more than a moment (None), always
    (True) or never (False).

    >>> import numpy as np
    >>> sd = {"a": np.arange(1.0, 5.0).reshape(2, 2), "b": np.ones((2, 2))}
    >>> t = sensitivity(sd, lambda d: float(sum(v.sum() for v in d.values())),
    ...                 sparsities=(0.5,))
    >>> t.values.tolist(), t.baseline
    ([[11.0], [12.0]], 14.0)
    """
    if criterion not in CRITERIA:
        raise ArgumentError(f"criterion: {criterion!r} is not one of {', '.join(CRITERIA)}")
    if not callable(evaluate):
        raise ArgumentError("evaluate: expected a callable state_dict -> float")
    if layers is None:
        names = [k for k, v in state_dict.items() if np.ndim(v) >= 2 or targets is not None]
        layers = select(names, targets, ignore, what="tensors")
    else:
        layers = list(layers)
        missing = [k for k in layers if k not in state_dict]
        if missing:
            raise ArgumentError(f"layers: not in state_dict: {', '.join(missing)}")
    sparsities = tuple(float(s) for s in sparsities)
    for s in sparsities:
        if not 0.0 <= s <= 1.0:
            raise ArgumentError(f"sparsities: {s} is outside [0, 1]")
    baseline = float(evaluate(dict(state_dict)))
    values = np.empty((len(layers), len(sparsities)))
    total = len(layers) * len(sparsities)
    bar = None
    if progress is not False:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=total, desc="sensitivity", delay=0 if progress else 1.0,
                       leave=False)
        except ImportError:
            bar = None
    try:
        for i, name in enumerate(layers):
            for j, s in enumerate(sparsities):
                sd = dict(state_dict)
                sd[name] = _prune_one(state_dict[name], s, criterion, seed)
                values[i, j] = float(evaluate(sd))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return SensitivityTable(layers, sparsities, values, baseline)
