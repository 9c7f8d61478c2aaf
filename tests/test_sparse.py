"""litecomp.sparse: packed masks against numpy.packbits, the sparse-bitmask layout against
its definition, bit-exact round trips, sizes, and malformed input."""

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import prune, sparse
from conftest import same_for_all_paths

DTYPES = [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, np.int8, np.int32]


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 9), (5, 64), (2, 3, 17), (0, 5)])
def test_pack_unpack_count_match_numpy(shape, rng, simd_level):
    m = rng.random(shape) < 0.4
    p = sparse.pack_bits(m)
    np.testing.assert_array_equal(p, np.packbits(m, axis=-1, bitorder="little"))
    np.testing.assert_array_equal(sparse.unpack_bits(p, shape), m)
    assert sparse.count_bits(p, shape) == m.sum()


def test_pack_errors():
    with pytest.raises(litecomp.ArgumentError, match="^mask"):
        sparse.pack_bits(np.ones(3, np.float32))
    with pytest.raises(litecomp.ShapeError, match="^packed"):
        sparse.unpack_bits(np.zeros(3, np.uint8), (2, 9))
    with pytest.raises(litecomp.FormatError, match="padding"):
        sparse.count_bits(np.array([0xff], np.uint8), (1, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_bitmask_round_trip_is_bit_exact(dtype, rng, simd_level):
    w = (rng.standard_normal((37, 45)) * 10).astype(dtype)
    wp = prune.apply(w, prune.l1_unstructured(w.astype(np.float32), 0.6))
    if wp.dtype.kind == "f" or wp.dtype == ml_dtypes.bfloat16:
        wp.reshape(-1)[:3] = np.array([np.inf, -np.inf, np.nan]).astype(dtype)
    sd = {"w": wp, "b": np.ones(3, np.float32), "conv": wp.reshape(37, 5, 9)}
    c = sparse.compress(sd)
    assert set(c) == {"b"} | {f"{p}.{s}" for p in ("w", "conv") for s in sparse.BITMASK_KEYS}
    nz = wp.astype(np.float64) != 0 if wp.dtype != np.int8 else wp != 0
    nz |= np.isnan(wp.astype(np.float64))
    np.testing.assert_array_equal(c["w.bitmask"], np.packbits(nz, axis=-1, bitorder="little"))
    assert c["w.compressed"].dtype == wp.dtype and c["w.compressed"].size == nz.sum()
    assert c["w.compressed"].tobytes() == wp[nz].tobytes()
    want_off = np.concatenate([[0], np.cumsum(nz.sum(axis=1))[:-1]])
    np.testing.assert_array_equal(c["w.row_offsets"], want_off)
    np.testing.assert_array_equal(c["w.shape"], [37, 45])
    d = sparse.decompress(c)
    assert list(d) == ["w", "b", "conv"]
    for k in sd:
        assert d[k].dtype == sd[k].dtype and d[k].shape == sd[k].shape
        assert d[k].tobytes() == sd[k].tobytes()


def test_negative_zero_comes_back_as_zero():
    w = np.zeros((2, 64), np.float32)
    w[0, 0] = -0.0
    w[1, 1] = 1.5
    d = sparse.decompress(sparse.compress({"w": w}))
    np.testing.assert_array_equal(d["w"], w)  # equal; the sign of that zero is not kept
    assert np.signbit(w[0, 0]) and not np.signbit(d["w"][0, 0])


def test_sizes_shrink_as_promised():
    w = litecomp.random.uniform((512, 512), -1, 1)
    for amount, want in ((0.5, 0.53), (0.9, 0.13)):
        c = sparse.compress({"w": prune.apply(w, prune.l1_unstructured(w, amount))})
        assert sparse.nbytes(c) / w.nbytes == pytest.approx(want, abs=0.01)
    # dense tensors stay dense unless asked
    assert list(sparse.compress({"w": w})) == ["w"]
    assert "w.bitmask" in sparse.compress({"w": w}, only_if_smaller=False)


def test_identical_for_every_thread_count(rng):
    w = prune.apply(*(lambda w: (w, prune.l1_unstructured(w, 0.5)))(
        rng.standard_normal((301, 257)).astype(np.float32)))
    res = same_for_all_paths(lambda: sparse.compress({"w": w}))
    for _, c in res:
        for k in c:
            assert c[k].tobytes() == res[0][1][k].tobytes()


def test_malformed_compressed_data_raises(rng):
    w = prune.apply(np.ones((4, 16), np.float32), rng.random((4, 16)) < 0.3)
    c = sparse.compress({"w": w}, only_if_smaller=False)
    bad = dict(c, **{"w.row_offsets": c["w.row_offsets"] + 1})
    with pytest.raises(litecomp.FormatError, match="row_offsets"):
        sparse.decompress(bad)
    bad = dict(c, **{"w.compressed": c["w.compressed"][:-1]})
    with pytest.raises(litecomp.FormatError, match="compressed"):
        sparse.decompress(bad)
    bad = dict(c, **{"w.bitmask": c["w.bitmask"][:2]})
    with pytest.raises(litecomp.FormatError, match="bitmask"):
        sparse.decompress(bad)
    bad = {k: v for k, v in c.items() if k != "w.row_offsets"}
    with pytest.raises(litecomp.FormatError, match="missing"):
        sparse.decompress(bad)


@pytest.mark.parametrize("dtype", DTYPES[:4])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 4)])
def test_nm_compact_round_trip(dtype, n, m, rng):
    w = rng.standard_normal((6, 32)).astype(dtype)
    wp = prune.apply(w, prune.nm(w, n, m))
    wp[0, :m] = 0  # a group with fewer non-zeros than kept slots
    c = sparse.compress({"w": wp, "dense": w}, format="nm", n=n, m=m)
    assert "w.nm_values" in c and "dense" in c  # w is not N:M sparse -> stays dense
    assert c["w.nm_values"].shape == (6, 32 // m * (m - n))
    d = sparse.decompress(c)
    assert d["w"].tobytes() == wp.tobytes() and d["dense"] is w
    if (n, m) == (2, 4) and dtype == np.float32:
        body = c["w.nm_values"].nbytes + c["w.nm_index"].nbytes
        assert body == pytest.approx(0.53 * wp.nbytes, rel=0.01)


def test_compressed_file_round_trip_through_safetensors(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    w = litecomp.random.normal((64, 96), seed=2)
    sd = {"fc.weight": prune.apply(w, prune.l1_unstructured(w, 0.5)), "fc.bias": w[0].copy()}
    path = str(tmp_path / "m.safetensors")
    st.save_file(sparse.compress(sd), path)
    back = sparse.decompress(st.load_file(path))
    for k in sd:
        assert back[k].tobytes() == sd[k].tobytes()
