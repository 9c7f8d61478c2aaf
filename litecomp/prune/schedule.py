"""Sparsity schedules for gradual pruning.

``cubic`` is Zhu & Gupta's (2017) schedule used by AGP:
s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0))^3 for t0 <= t <= end, s_i before,
s_f after.  With ``frequency`` the sparsity changes only every ``frequency`` steps.
Pruning to a new cumulative target from an already pruned tensor takes the torch-style
amount on the remaining entries: ``incremental_amount(current, target)``.

>>> [round(cubic(t, 0.9, end=10), 3) for t in (0, 5, 10, 20)]
[0.0, 0.787, 0.9, 0.9]
>>> round(incremental_amount(0.5, 0.75), 6)
0.5
"""

from .._check import check_float, check_int
from ..errors import ArgumentError


def _progress(step, start, end, frequency):
    step = check_int(step, "step")
    start = check_int(start, "start", 0)
    end = check_int(end, "end")
    frequency = check_int(frequency, "frequency", 1)
    if end <= start:
        raise ArgumentError(f"end: {end} must be greater than start ({start})")
    if step <= start:
        return 0.0
    if step >= end:
        return 1.0
    step = start + (step - start) // frequency * frequency
    return (step - start) / (end - start)


def cubic(step, final, *, initial=0.0, start=0, end, frequency=1) -> float:
    """Target sparsity at ``step`` (Zhu & Gupta cubic)."""
    final = check_float(final, "final", 0.0, 1.0)
    initial = check_float(initial, "initial", 0.0, 1.0)
    p = _progress(step, start, end, frequency)
    return final + (initial - final) * (1.0 - p) ** 3


def linear(step, final, *, initial=0.0, start=0, end, frequency=1) -> float:
    """Target sparsity at ``step``, rising linearly from ``initial`` to ``final``."""
    final = check_float(final, "final", 0.0, 1.0)
    initial = check_float(initial, "initial", 0.0, 1.0)
    p = _progress(step, start, end, frequency)
    return initial + (final - initial) * p


def incremental_amount(current, target) -> float:
    """The fraction of the remaining entries to prune to go from sparsity ``current`` to
    ``target`` (what ``mask=`` pruning takes as ``amount``)."""
    current = check_float(current, "current", 0.0, 1.0)
    target = check_float(target, "target", 0.0, 1.0)
    if target < current:
        raise ArgumentError(f"target: {target} is below the current sparsity {current}")
    if current >= 1.0:
        return 0.0
    return min(1.0, (target - current) / (1.0 - current))
