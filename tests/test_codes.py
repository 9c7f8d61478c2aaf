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

TABLES = ("distill_kinds", "topk_modes", "norm_kinds", "random_dists", "quant_views",
          "quant_roundings", "matmul_paths", "matmul_layouts", "matmul_sources")


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


def test_quant_views_every_code_selects_its_named_slots(rng):
    from litecomp._check import as_kernel_input
    from litecomp.quant.core import VIEW, _view, minmax
    from litecomp.reference import quant as ref_quant
    assert VIEW is _C.quant_views
    assert set(VIEW) == {"tensor", "channel", "group"}
    x = rng.standard_normal((4, 6)).astype(np.float32)
    slots = {"tensor": 1, "channel": 6, "group": 8}
    for name, (axis, group) in {"tensor": (None, None), "channel": (1, None),
                                "group": (None, 3)}.items():
        view = _view(x.shape, axis, group)
        assert view[3] == VIEW[name]
        mn, mx = minmax(as_kernel_input(x, "x"), view)
        want_mn, want_mx = ref_quant.minmax(x, view)
        assert mn.size == slots[name], name
        np.testing.assert_array_equal(mn, want_mn.astype(np.float32), err_msg=name)
        np.testing.assert_array_equal(mx, want_mx.astype(np.float32), err_msg=name)
    with pytest.raises(litecomp.ShapeError, match=f"mode {len(VIEW)} does not fit"):
        _C.quant_minmax(x, 0, 1, 1, 24, len(VIEW), np.empty(1, np.float32),
                        np.empty(1, np.float32))


def test_quant_roundings_every_code_rounds_as_named():
    """round_then_add: clamp(rint(x * inv) + zp); add_then_round: clamp(rint(x * inv + zp));
    fma_then_round: the same with a fused multiply-add (torch's three ways)."""
    from litecomp.quant.core import ROUNDING, _view
    assert ROUNDING is _C.quant_roundings

    def codes(x, s, zp, rounding):
        out = np.empty(1, np.int8)
        _C.quant_affine(np.array([x], np.float32), 0, *_view((1,), None, None),
                        np.array([s], np.float32), np.array([zp], np.int32), -128, 127, out,
                        rounding)
        return int(out[0])
    # 0.5 - 2^-25: rounding first gives 0 + 1; adding 1 first rounds the float sum to 1.5 -> 2
    x = np.float32(0.5) - np.float32(2 ** -25)
    assert {n: codes(x, 1.0, 1, c) for n, c in ROUNDING.items()} == {
        "round_then_add": 1, "add_then_round": 2, "fma_then_round": 2}
    # -1.05 * (1/0.1) rounds to -10.5 in float32 (-> -10 + 3 = -7, and -7.5 -> -8); the fused
    # multiply-add keeps the exact product, just above -10.5 (-> -7)
    assert {n: codes(np.float32(-1.05), 0.1, 3, c) for n, c in ROUNDING.items()} == {
        "round_then_add": -7, "add_then_round": -8, "fma_then_round": -7}
    # what the torch-exact functions use names only rules C has
    from litecomp.quant.core import _TORCH_ROUNDING
    assert set(_TORCH_ROUNDING.values()) <= set(ROUNDING)
    with pytest.raises(litecomp.ArgumentError, match=f"rounding: unknown rounding code {len(ROUNDING)}"):
        codes(1.0, 1.0, 1, len(ROUNDING))


def test_matmul_paths_are_the_simd_names_and_every_one_gives_the_same_bits(rng):
    from litecomp.quant import matmul as qm
    assert qm.PATHS is _C.matmul_paths
    assert set(_C.matmul_paths) == {"scalar", "avx2", "avx_vnni", "avx512_vnni", "auto"}
    assert set(_C.matmul_paths) - {"auto", "avx_vnni"} <= set(litecomp._runtime.SIMD_LEVELS)
    assert qm.available_paths()[0] == "scalar"
    W = rng.standard_normal((20, 64)).astype(np.float32)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    L = litecomp.quant.prepare_linear(litecomp.quant.quantize(W, 8, axis=0))
    want = L(x, path="scalar")
    for name in qm.available_paths() + ["auto"]:
        np.testing.assert_array_equal(L(x, path=name), want, err_msg=name)
    out = np.empty((3, 20), np.float32)
    with pytest.raises(litecomp.ArgumentError, match=f"path: unknown path code {len(qm.PATHS)}"):
        _C.matmul_i8_linear(x, L._packed, L._rowsum, L._sw, None, out, 20, 64, len(qm.PATHS))


def test_matmul_layouts_and_sources_every_code_does_what_its_name_says(rng):
    from litecomp.reference import matmul as ref_matmul
    codes = rng.integers(0, 16, (17, 64)).astype(np.uint8)
    for name, code in _C.matmul_layouts.items():
        src = codes.view(np.int8) if name == "i8" else codes
        packed = _C.matmul_pack(code, src, _C.matmul_sources["stream"], 17, 64, 64, 8)
        packed = packed[0] if name == "i8" else packed
        np.testing.assert_array_equal(packed, ref_matmul.pack(name, src), err_msg=name)
    W = rng.standard_normal((17, 64)).astype(np.float32)
    data = {"stream": (litecomp.quant.pack_codes(codes, 4), 4),
            "bitsandbytes": (litecomp.quant.quantize_4bit(W, "nf4").data, 4),
            "Q4_0": (litecomp.quant.gguf.quantize(W, "Q4_0"), 4),
            "Q4_1": (litecomp.quant.gguf.quantize(W, "Q4_1"), 4),
            "Q8_0": (litecomp.quant.gguf.quantize(W, "Q8_0"), 8)}
    assert set(data) == set(_C.matmul_sources)
    for name, code in _C.matmul_sources.items():
        d, bits = data[name]
        d = np.ascontiguousarray(d)
        packed = _C.matmul_pack(_C.matmul_layouts["blk8"], d, code, 17, 64, 64, bits)
        want = ref_matmul.source_codes(name, d, 17, 64, 64, bits)
        np.testing.assert_array_equal(packed, ref_matmul.pack("blk8", want), err_msg=name)
    with pytest.raises(litecomp.ArgumentError, match="layout: unknown layout code"):
        _C.matmul_pack(len(_C.matmul_layouts), codes, 0, 17, 64, 64, 8)
    with pytest.raises(litecomp.ArgumentError, match="source: unknown source code"):
        _C.matmul_pack(1, codes, len(_C.matmul_sources), 17, 64, 64, 8)
