"""The integer codes C and Python share: one table per family, written once in C and read
by Python (docs/conventions.md, "Code tables").  Each test checks one table against the
Python side that uses it: every code is reachable under its name and computes what the name
says (against the NumPy reference), Python's per-code knowledge names only codes C has,
and C rejects a code past the table's end."""

import numpy as np
import pytest

import litecomp
from litecomp import _C, distill, dtypes, prune
from litecomp import random as lrandom
from litecomp.reference import distill as ref_distill
from litecomp.reference import prune as ref_prune
from litecomp.reference import random as ref_random

TABLES = ("distill_kinds", "topk_modes", "norm_kinds", "random_dists")


@pytest.mark.parametrize("table", TABLES)
def test_each_table_numbers_its_names_from_zero_and_is_read_only(table):
    codes = getattr(_C, table)
    assert sorted(codes.values()) == list(range(len(codes)))
    assert all(isinstance(name, str) and name for name in codes)
    with pytest.raises(TypeError):
        codes["new"] = len(codes)  # a mappingproxy: Python cannot drift from C


# C's spelling of each litecomp dtype name (LC_DTYPES in csrc/litecomp.h).
C_DTYPE_NAMES = {"float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
                 "float8_e4m3fn": "F8E4M3FN", "float8_e5m2": "F8E5M2", "int8": "I8",
                 "uint8": "U8", "int16": "I16", "int32": "I32", "int64": "I64", "bool": "BOOL",
                 "uint16": "U16", "uint32": "U32", "uint64": "U64"}


def test_dtype_codes_names_and_sizes_agree_with_c():
    c = _C.dtype_table()
    py = dtypes.table()
    assert set(c) == set(py)
    for code, (name, size) in py.items():
        assert c[code] == (C_DTYPE_NAMES[name], size), (code, name)


def test_distill_kinds_every_code_computes_its_named_loss(rng):
    assert distill.KINDS is _C.distill_kinds
    # What the Python layer knows per kind names only kinds C has.
    assert set(distill._T2_KINDS) <= set(distill.KINDS)
    assert set(distill._ALIASES.values()) <= set(distill.KINDS)
    s = rng.standard_normal((4, 37)) * 2
    t = rng.standard_normal((4, 37)) * 2
    for name in distill.KINDS:
        T = 1.0 if name in ("mse", "cosine") else 2.0
        got_l, got_g = distill.loss(name, s, t, temperature=T)
        want_l, want_g = ref_distill.loss(name, s, t, temperature=T)
        # float64 input, measured: loss rel 4e-16, gradient rel 2e-13 (abs 3e-17)
        np.testing.assert_allclose(got_l, want_l, rtol=1e-14, err_msg=name)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-11, atol=1e-16, err_msg=name)
    row_loss = np.empty(4, np.float64)
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        _C.distill_rows(len(distill.KINDS), s, 1, t, 1, None, -100, 1.0, 0.0, 0.0, 1.0,
                        0.25, None, row_loss)


def test_topk_modes_every_code_computes_its_named_mode(rng):
    assert set(_C.topk_modes) == {"renormalize", "tail"}
    s = rng.standard_normal((3, 50)) * 2
    ids, lps = distill.topk(rng.standard_normal((3, 50)) * 2, 6)
    results = {}
    for mode in _C.topk_modes:
        got, _ = distill.kl_div_topk(s, ids, lps, mode=mode, reduction="none")
        want = ref_distill.kl_div_topk(s, ids, lps, mode=mode)[0]
        np.testing.assert_allclose(got, want, rtol=1e-14, err_msg=mode)  # measured 3e-16
        results[mode] = got
    assert np.all(results["renormalize"] != results["tail"])
    with pytest.raises(litecomp.ArgumentError, match="mode"):
        _C.distill_sparse(s, 1, ids, lps, len(_C.topk_modes), None, -100, 1.0, 1.0, 1.0,
                          None, np.empty(3))


def test_norm_kinds_every_code_computes_its_named_order(rng):
    # "p" is the general path; every other kind is named by the order it computes.
    orders = {name: (3.0 if name == "p" else float(name)) for name in _C.norm_kinds}
    assert orders == {"p": 3.0, "1": 1.0, "2": 2.0, "inf": np.inf, "-inf": -np.inf}
    w = rng.standard_normal((5, 8))
    for name, order in orders.items():
        kind, p = prune._norm_kind(order)
        assert (kind, p) == (_C.norm_kinds[name], order)
        np.testing.assert_allclose(prune.channel_norms(w, order, 0),
                                   ref_prune.channel_norms(w, order, 0), rtol=1e-12,
                                   err_msg=name)
        np.testing.assert_allclose(prune.block_norms(w, (2, 3), norm=order),
                                   ref_prune.block_norms(w, (2, 3), norm=order), rtol=1e-12,
                                   err_msg=name)
    assert prune._norm_kind("fro") == (_C.norm_kinds["2"], 2.0)
    past = len(_C.norm_kinds)
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        _C.channel_norms(w, 1, 1, 5, 8, past, 2.0, np.empty(5))
    with pytest.raises(litecomp.ArgumentError, match="kind"):
        _C.block_norms(w, 1, 2, 3, past, 2.0, np.empty((3, 3)))


def test_random_dists_every_code_draws_its_named_distribution():
    assert set(_C.random_dists) == {"uniform", "normal", "bits"}
    np.testing.assert_array_equal(lrandom.uniform(1000, -1.0, 2.0, seed=3, stream=1),
                                  ref_random.uniform(1000, -1.0, 2.0, 3, 1))
    np.testing.assert_array_equal(lrandom.normal(1000, 0.5, 2.0, seed=3, stream=1),
                                  ref_random.normal(1000, 0.5, 2.0, 3, 1))
    np.testing.assert_array_equal(lrandom.bits(1000, seed=3, stream=1),
                                  ref_random.bits(1000, 3, 1))
    with pytest.raises(litecomp.ArgumentError, match="dist"):
        _C.fill_random(np.empty(4, np.float32), 0, 0, 0, len(_C.random_dists), 0.0, 1.0)
