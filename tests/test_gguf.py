"""GGUF block formats: byte parity with gguf.quants and the NumPy reference."""

import numpy as np
import pytest

import litecomp
from litecomp.quant import gguf as lg
from litecomp.reference import gguf as ref

from conftest import same_for_all_paths

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402
from gguf.quants import dequantize as g_dequantize, quantize as g_quantize  # noqa: E402

LEGACY = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def datasets():
    rng = np.random.default_rng(7)
    z = rng.standard_normal((16, 256)).astype(np.float32)
    z[:, :64] = 0
    z[:, 64:96] = -0.0
    z[3, 96:128] = np.where(np.arange(32) % 2, 0.0, -0.0)
    ties = rng.integers(-16, 17, (16, 256)).astype(np.float32) / 2
    return {
        "normal": rng.standard_normal((16, 256)).astype(np.float32),
        "heavy": rng.standard_cauchy((16, 256)).astype(np.float32),
        "zero-blocks": z,
        "huge": (rng.standard_normal((16, 256)) * 1e30).astype(np.float32),
        "tiny": (rng.standard_normal((16, 256)) * 1e-38).astype(np.float32),
        "subnormal": (rng.standard_normal((16, 256)) * 1e-42).astype(np.float32),
        "mixed-scales": (rng.standard_normal((16, 256))
                         * np.exp(rng.uniform(-30, 30, (16, 1)))).astype(np.float32),
        "ties": ties,
    }


DATA = datasets()


def assert_same_blocks(got, want, x, name):
    """Byte equality, except one documented case: for Q4_1/Q5_1 blocks whose minimum is a
    zero of both signs, NumPy's vectorised min picks the sign of that zero by its own lane
    order while litecomp keeps the first; m then differs only in its sign bit."""
    size = lg.FORMATS[name][2]
    g, w = got.reshape(-1, size), np.asarray(want).reshape(-1, size)
    if name in ("Q4_1", "Q5_1"):
        b = x.reshape(-1, 32)
        mixed = (b.min(1) == 0) & (np.signbit(b) & (b == 0)).any(1) & \
            (~np.signbit(b) & (b == 0)).any(1)
        np.testing.assert_array_equal(g[mixed][:, 4:], w[mixed][:, 4:])
        sign_free = [0xFF, 0x7F]  # m's high byte without its sign bit
        np.testing.assert_array_equal(g[mixed][:, 2:4] & sign_free, w[mixed][:, 2:4] & sign_free)
        g, w = g[~mixed], w[~mixed]
    np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.parametrize("kind", list(DATA))
def test_quantize_matches_gguf(name, kind, simd_level):
    x = DATA[kind]
    with np.errstate(all="ignore"):
        want = g_quantize(x, getattr(T, name))
        got = lg.quantize(x, name)
        assert got.shape == want.shape
        assert_same_blocks(got, want, x, name)
        assert_same_blocks(got, ref.quantize(x, name), x, name)
        back = lg.dequantize(got, name)
        np.testing.assert_array_equal(back.view(np.uint32),
                                      g_dequantize(want, getattr(T, name)).view(np.uint32))
        np.testing.assert_array_equal(back.ravel(), ref.dequantize(got, name))


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K"])
def test_k_quants_dequantize_match_gguf(name):
    rng = np.random.default_rng(3)
    _tid, blk, nbytes = lg.FORMATS[name]
    raw = rng.integers(0, 256, (8, nbytes), dtype=np.uint8)
    d_off = [0, 2] if name == "Q4_K" else [nbytes - 2]
    for off in d_off:  # keep the fp16 scales finite and moderate
        raw[:, off:off + 2] = np.array([0.01], np.float16).view(np.uint8)
    want = g_dequantize(raw, getattr(T, name))
    got = lg.dequantize(raw, name)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


# measured RMSE on DATA["normal"]: Q4_K 0.0710, Q6_K 0.0177 (Q4_1 0.0776, Q4_0 0.0864); the
# bytes themselves are checked against llama.cpp's reference in test_gguf_kquant_reference.py
@pytest.mark.parametrize("name,rmse", [("Q4_K", 0.073), ("Q6_K", 0.0182)])
def test_k_quants_roundtrip(name, rmse):
    x = DATA["normal"]
    q = lg.quantize(x, name)
    assert q.shape == (16, 256 // lg.FORMATS[name][1] * lg.FORMATS[name][2])
    y = g_dequantize(q, getattr(T, name))  # gguf's decoder reads our bytes
    err = np.sqrt(np.mean((y - x) ** 2))
    assert err < rmse
    # better than the legacy format of the same width
    legacy = "Q4_0" if name == "Q4_K" else "Q8_0"
    if name == "Q4_K":
        assert err < np.sqrt(np.mean((lg.dequantize(lg.quantize(x, legacy), legacy) - x) ** 2))
        assert err < np.sqrt(np.mean((lg.dequantize(lg.quantize(x, "Q4_1"), "Q4_1") - x) ** 2))
    zero = lg.quantize(np.zeros((1, 256), np.float32), name)
    assert not lg.dequantize(zero, name).any()


def test_threads_and_simd_identical():
    x = litecomp.random.normal((64, 4096), seed=2)
    outs = same_for_all_paths(lambda: lg.quantize(x, "Q4_0").tobytes())
    assert len({o for _, o in outs}) == 1


def test_bad_input():
    with pytest.raises(litecomp.ShapeError, match="block size"):
        lg.quantize(np.ones((2, 33), np.float32), "Q8_0")
    with pytest.raises(litecomp.ArgumentError, match="qtype"):
        lg.quantize(np.ones(32, np.float32), "Q3_X")
    x = np.ones(64, np.float32)
    x[5] = np.nan
    with pytest.raises(litecomp.NonFiniteError):
        lg.quantize(x, "Q4_0")
    with pytest.raises(litecomp.FormatError, match="18-byte"):
        lg.dequantize(np.zeros(19, np.uint8), "Q4_0")
    with pytest.raises(litecomp.DTypeError):
        lg.dequantize(np.zeros(18, np.int8), "Q4_0")


def test_write_gguf_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    sd = {"w": rng.standard_normal((64, 128)).astype(np.float32),
          "b": rng.standard_normal(64).astype(np.float32)}
    kinds = lg.write_gguf(tmp_path / "m.gguf", sd, "Q4_0")
    assert kinds == {"w": "Q4_0", "b": "F32"}
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tensors = {t.name: t for t in r.tensors}
    assert tensors["w"].tensor_type == T.Q4_0
    np.testing.assert_array_equal(np.asarray(tensors["w"].data).reshape(-1),
                                  lg.quantize(sd["w"], "Q4_0").reshape(-1))
    np.testing.assert_array_equal(np.asarray(tensors["b"].data), sd["b"])


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "bfloat16"])
def test_other_input_dtypes_match_gguf(dtype):
    import ml_dtypes
    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype
    x = DATA["normal"].astype(dt)
    for name in ("Q8_0", "Q4_0"):
        want = g_quantize(x.astype(np.float32), getattr(T, name))
        np.testing.assert_array_equal(lg.quantize(x, name), want)


def test_write_gguf_dtypes_and_no_partial_file(tmp_path):
    sd = {"w": np.ones((4, 256), np.float32), "steps": np.arange(64, dtype=np.int64)}
    kinds = lg.write_gguf(tmp_path / "a.gguf", sd, "Q8_0", min_elements=1)
    assert kinds == {"w": "Q8_0", "steps": "I64"}
    with pytest.raises(litecomp.DTypeError, match="^flags"):
        lg.write_gguf(tmp_path / "b.gguf", {"w": sd["w"], "flags": np.ones(3, bool)}, "Q8_0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf"]


def test_quantize_into_out():
    x = DATA["normal"]
    out = np.empty((16, 8 * 18), np.uint8)
    assert lg.quantize(x, "Q4_0", out=out) is out
    np.testing.assert_array_equal(out, lg.quantize(x, "Q4_0"))
    with pytest.raises(litecomp.ArgumentError, match="^out"):
        lg.quantize(x, "Q4_0", out=np.empty((16, 8 * 18), np.int8))


def test_format_table_is_cs_and_matches_the_gguf_package():
    """FORMATS comes from the block structs in csrc/gguf.h (LC_GGUF_TYPES), and every id and
    size there is ggml's."""
    from litecomp import _C
    assert lg.FORMATS == _C.gguf_formats()
    assert set(lg.FORMATS) == {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                               "Q5_K", "Q6_K"}
    for name, (tid, block, nbytes) in lg.FORMATS.items():
        t = getattr(T, name)
        assert tid == t.value
        assert (block, nbytes) == gguf.constants.GGML_QUANT_SIZES[t]


def test_write_gguf_targets_ignore(tmp_path):
    from litecomp.errors import ArgumentError
    rng = np.random.default_rng(7)
    sd = {f"l{i}.weight": rng.standard_normal((8, 64)).astype(np.float32) for i in range(3)}
    kinds = lg.write_gguf(tmp_path / "t.gguf", sd, "Q8_0", min_elements=1,
                          targets="l*.weight", ignore=["l1.*"])
    assert kinds == {"l0.weight": "Q8_0", "l1.weight": "F32", "l2.weight": "Q8_0"}
    r = gguf.GGUFReader(str(tmp_path / "t.gguf"))
    got = {t.name: t.tensor_type.name for t in r.tensors}
    assert got == kinds
    # select= (the older spelling): only l2 quantized, the rest float32, in the file too
    kinds = lg.write_gguf(tmp_path / "s.gguf", sd, "Q8_0", min_elements=1,
                          select=lambda n: n == "l2.weight")
    assert kinds == {"l0.weight": "F32", "l1.weight": "F32", "l2.weight": "Q8_0"}
    r = gguf.GGUFReader(str(tmp_path / "s.gguf"))
    stored = {t.name: t for t in r.tensors}
    assert {n: t.tensor_type.name for n, t in stored.items()} == kinds
    np.testing.assert_array_equal(np.asarray(stored["l0.weight"].data).reshape(8, 64),
                                  sd["l0.weight"])
    np.testing.assert_array_equal(
        g_dequantize(np.asarray(stored["l2.weight"].data), T.Q8_0).reshape(8, 64),
        g_dequantize(g_quantize(sd["l2.weight"], T.Q8_0), T.Q8_0))
    with pytest.raises(ArgumentError, match="match none"):
        lg.write_gguf(tmp_path / "n.gguf", sd, "Q8_0", targets="attn.*")
    assert not (tmp_path / "n.gguf").exists()
    with pytest.raises(ArgumentError, match="not both"):
        lg.write_gguf(tmp_path / "n.gguf", sd, targets="l0.*", select=lambda n: True)
