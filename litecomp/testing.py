"""Assertions for tests of compressed models, in the style of ``numpy.testing``: each checks a
property of a compressed state dict (or of two models' outputs) and, on failure, raises
AssertionError with a per-tensor table that says where it failed.

- ``compare(a, b)`` -> ``Comparison``: per tensor, sparsity of each side, SQNR, max |a - b|
  and cosine; ``str()`` is the table;
- ``assert_sparsity(sd, expected, *, targets=None, ignore=None, tol=0.01)``;
- ``assert_sqnr(reference, compressed, min_db, *, targets=None, ignore=None)``;
- ``assert_outputs_close(model_a, model_b, batches, *, min_cosine=0.99, max_rel=None)``.

With pytest, the ``litecomp_report`` fixture (this module is a pytest plugin: ``-p
litecomp.testing``, or ``pytest_plugins = ["litecomp.testing"]`` in a conftest.py) collects
comparisons and prints their tables under a failing test; ``--litecomp-report`` prints them
for passing tests too.  See docs/testing.md for a worked example test file.

>>> import numpy as np
>>> a = {"w": np.arange(1.0, 9.0, dtype=np.float32).reshape(2, 4)}
>>> b = {"w": np.where(a["w"] > 4, a["w"], 0).astype(np.float32)}
>>> assert_sparsity(b, 0.5)
>>> assert_sparsity(b, 0.25)
Traceback (most recent call last):
...
AssertionError: sparsity 0.5000 is not 0.2500 +- 0.0100 over 1 tensor(s)
tensor  shape  sparsity
------  -----  --------
w       2x4      0.5000
"""

import math
from dataclasses import dataclass

import numpy as np

from ._table import render_table
from .errors import ArgumentError
from .select import select

__all__ = ["compare", "Comparison", "assert_sparsity", "assert_sqnr", "assert_outputs_close"]


def _dense(sd):
    """Float tensors of a state dict, litecomp's quantized tensors dequantized."""
    from .quant.state import dequantize_state_dict, quantized_names
    if not hasattr(sd, "items"):
        raise ArgumentError(f"state_dict: expected a dict of name -> array, got "
                            f"{type(sd).__name__}")
    if quantized_names(sd):
        sd = dequantize_state_dict(sd)
    return {k: np.asarray(v) for k, v in sd.items()}


def _floats(sd, targets, ignore, min_ndim=1):
    names = [k for k, v in sd.items() if v.dtype.kind in "fV" and v.ndim >= min_ndim]
    return select(names, targets, ignore, what="float tensors")


def _sparsity(a):
    from .core import tensor_stats
    return float(tensor_stats(a).sparsity)


def _shape(a):
    return "x".join(map(str, a.shape)) or "scalar"


@dataclass
class Comparison:
    """Per-tensor comparison rows of two state dicts (``rows``: dicts with name, shape,
    sparsity_a, sparsity_b, sqnr_db, max_abs, cosine)."""
    rows: list

    def row(self, name):
        for r in self.rows:
            if r["name"] == name:
                return r
        raise KeyError(name)

    @property
    def min_sqnr_db(self):
        return min((r["sqnr_db"] for r in self.rows), default=math.inf)

    def table(self, names=None):
        rows = [r for r in self.rows if names is None or r["name"] in names]
        body = [[r["name"], r["shape"], f"{r['sparsity_a']:.4f}", f"{r['sparsity_b']:.4f}",
                 "inf" if math.isinf(r["sqnr_db"]) else f"{r['sqnr_db']:.2f}",
                 f"{r['max_abs']:.3g}", f"{r['cosine']:.6f}"] for r in rows]
        return render_table(["tensor", "shape", "sparsity a", "sparsity b", "SQNR dB",
                             "max |a-b|", "cosine"], body, align=["<", "<"] + [">"] * 5)

    def __str__(self):
        return self.table()


def compare(a, b, *, targets=None, ignore=None) -> Comparison:
    """Compare the float tensors two state dicts share (litecomp-quantized ones dequantized):
    per tensor the sparsity of each, the SQNR of b against a (dB), max |a - b| and the
    cosine similarity, accumulated in float64 in one C pass."""
    from .quant.state import error_report
    da, db = _dense(a), _dense(b)
    shared = [n for n in _floats(da, targets, ignore) if n in db]
    if not shared:
        raise ArgumentError("compare: the two state dicts share no float tensor")
    rows = []
    for n in shared:
        x, y = da[n], db[n]
        if x.shape != y.shape:
            raise AssertionError(f"{n}: shapes differ, {x.shape} vs {y.shape}")
        e = error_report(n, x, np.asarray(y, np.float32) if y.dtype != np.float32 else y)
        rows.append({"name": n, "shape": _shape(x), "sparsity_a": _sparsity(x),
                     "sparsity_b": _sparsity(y), "sqnr_db": e.sqnr_db,
                     "max_abs": e.max_abs_err, "cosine": e.cosine})
    return Comparison(rows)


def assert_sparsity(state_dict, expected, *, targets=None, ignore=None, tol=0.01,
                    per_tensor=False, min_ndim=2):
    """The fraction of zeros over the tensors ``targets`` / ``ignore`` select (default every
    float tensor with ``min_ndim`` or more dimensions) is ``expected`` within ``tol``; with
    ``per_tensor`` every tensor's own fraction is."""
    sd = _dense(state_dict)
    names = _floats(sd, targets, ignore, min_ndim)
    if not names:
        raise ArgumentError("assert_sparsity: no tensor selected")
    zeros = [(_sparsity(sd[n]), sd[n].size) for n in names]
    total = sum(s * n for s, n in zeros) / sum(n for _, n in zeros)
    bad = [n for n, (s, _) in zip(names, zeros) if abs(s - expected) > tol] if per_tensor \
        else ([] if abs(total - expected) <= tol else names)
    if bad:
        table = render_table(["tensor", "shape", "sparsity"],
                             [[n, _shape(sd[n]), f"{s:.4f}"] for n, (s, _) in zip(names, zeros)
                              if n in bad], align=["<", "<", ">"])
        what = "of each tensor" if per_tensor else f"{total:.4f}"
        raise AssertionError(f"sparsity {what} is not {expected:.4f} +- {tol:.4f} over "
                             f"{len(bad)} tensor(s)\n{table}")


def assert_sqnr(reference, compressed, min_db, *, targets=None, ignore=None):
    """Every shared float tensor of ``compressed`` has SQNR >= ``min_db`` against
    ``reference``; the failure lists the tensors below it."""
    c = compare(reference, compressed, targets=targets, ignore=ignore)
    low = [r["name"] for r in c.rows if r["sqnr_db"] < min_db]
    if low:
        raise AssertionError(f"{len(low)} of {len(c.rows)} tensors have SQNR below "
                             f"{min_db} dB\n{c.table(low)}")
    return c


def _run(model, batch):
    out = model(batch)
    if hasattr(out, "logits"):
        out = out.logits
    if hasattr(out, "detach"):
        out = out.detach().float().cpu().numpy()
    return np.asarray(out, np.float64)


def assert_outputs_close(model_a, model_b, batches, *, min_cosine=0.99, max_rel=None):
    """The two models' outputs on each batch agree: cosine similarity of the flattened
    outputs >= ``min_cosine`` and, with ``max_rel``, ||a - b|| / ||a|| <= max_rel.  A model
    is any callable (a torch module, a function of a NumPy batch); torch outputs and
    transformers' ``.logits`` are converted.  Returns the per-batch (cosine, rel) list."""
    results, bad = [], []
    for i, batch in enumerate(batches):
        a, b = _run(model_a, batch), _run(model_b, batch)
        if a.shape != b.shape:
            raise AssertionError(f"batch {i}: output shapes differ, {a.shape} vs {b.shape}")
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        cos = float(np.dot(a.ravel(), b.ravel()) / (na * nb)) if na and nb else \
            float(na == nb)
        rel = float(np.linalg.norm(a - b) / na) if na else float(np.linalg.norm(b) > 0)
        results.append((cos, rel))
        if cos < min_cosine or (max_rel is not None and rel > max_rel):
            bad.append(i)
    if not results:
        raise ArgumentError("batches: is empty")
    if bad:
        rows = [[i, f"{results[i][0]:.6f}", f"{results[i][1]:.3g}"] for i in bad]
        limit = f"cosine >= {min_cosine}" + (f", rel <= {max_rel}" if max_rel else "")
        raise AssertionError(f"outputs differ on {len(bad)} of {len(results)} batches "
                             f"(want {limit})\n"
                             + render_table(["batch", "cosine", "rel error"], rows))
    return results


# ------------------------------------------------------------------ pytest plugin
class Report:
    """What the ``litecomp_report`` fixture hands a test: ``add(title, comparison_or_text)``
    and ``compare(a, b, title=...)`` (which also adds the comparison)."""

    def __init__(self):
        self.sections = []

    def add(self, title, content):
        self.sections.append((title, str(content)))

    def compare(self, a, b, *, title="compare", **kw):
        c = compare(a, b, **kw)
        self.add(title, c)
        return c


def pytest_addoption(parser):
    parser.addoption("--litecomp-report", action="store_true", default=False,
                     help="print litecomp_report tables for passing tests too")


try:
    import pytest as _pytest
except ImportError:  # pragma: no cover - the plugin needs pytest; the asserts do not
    _pytest = None

if _pytest is not None:
    @_pytest.fixture
    def litecomp_report(request):
        """Collects comparison tables; they are printed when the test fails (or always with
        --litecomp-report)."""
        rep = Report()
        request.node._litecomp_report = rep
        yield rep

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(item, call):
        outcome = yield
        report = outcome.get_result()
        rep = getattr(item, "_litecomp_report", None)
        if rep is None or report.when != "call" or not rep.sections:
            return
        if report.failed or item.config.getoption("--litecomp-report"):
            for title, text in rep.sections:
                report.sections.append((f"litecomp: {title}", text))
