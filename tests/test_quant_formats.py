"""Histogram calibration (vs torch.ao), NF4/FP4, k-means weight sharing, the state-dict
workflow and the quantize CLI."""

import ml_dtypes
import numpy as np
import pytest

import litecomp
import litecomp.quant as Q
from litecomp.quant import codebook as cb
from litecomp.reference import codebook as ref
from litecomp.reference import quant as qref

from conftest import same_for_all_paths


# ------------------------------------------------------------------ histograms
def test_histc_matches_reference():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 300)) * 3).astype(np.float32)
    lo, hi = np.float32(-2.5), np.float32(3.0)
    h = Q.histc(x, 64, lo, hi)
    np.testing.assert_array_equal(h, qref.histc(x, 64, lo, hi))
    np.testing.assert_array_equal(Q.histc(x, 8, 1.5, 1.5), qref.histc(x, 8, 1.5, 1.5))
    hc = Q.histc(x, 16, x.min(1), x.max(1), axis=0)
    assert hc.shape == (7, 16) and (hc.sum(1) == 300).all()
    outs = same_for_all_paths(lambda: Q.histc(litecomp.random.normal(300_000, seed=1), 2048,
                                              -2, 2).tobytes())
    assert len({o for _, o in outs}) == 1


@pytest.mark.filterwarnings("ignore:Please use quant_min")
def test_histogram_observer_matches_torch():
    torch = pytest.importorskip("torch")
    from torch.ao.quantization.observer import HistogramObserver as T
    rng = np.random.default_rng(3)
    for dtype, scheme, rr in [("quint8", "affine", False), ("qint8", "symmetric", False),
                              ("quint8", "affine", True), ("qint8", "affine", False)]:
        qs = torch.per_tensor_affine if scheme == "affine" else torch.per_tensor_symmetric
        t = T(dtype=getattr(torch, dtype), qscheme=qs, reduce_range=rr)
        o = Q.HistogramObserver(dtype=dtype, scheme=scheme, reduce_range=rr)
        for i in range(4):  # growing ranges exercise torch's histogram upscaling
            x = (rng.standard_normal((32, 50)) * (i + 1) + 0.2 * i).astype(np.float32)
            if i == 1:
                x[0, 0] = 25.0
            t(torch.from_numpy(x))
            o.update(x)
        np.testing.assert_array_equal(o.hist[0], t.histogram.numpy())
        ts, tz = t.calculate_qparams()
        s, z = o.qparams()
        assert s[0] == np.float32(ts.item()) and z[0] == tz.item()


def test_histogram_per_channel_and_other_methods():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((4, 4000)) * np.array([[1], [2], [4], [8]])).astype(np.float32)
    x[:, 0] = 50  # an outlier per channel
    o = Q.HistogramObserver(axis=0, dtype="qint8", scheme="symmetric").update(x)
    s, z = o.qparams()
    assert s.shape == (4,) and (z == 0).all()
    # each channel equals a per-tensor observer on that channel alone
    for c in range(4):
        sc, _ = Q.HistogramObserver(dtype="qint8", scheme="symmetric").update(x[c]).qparams()
        assert sc[0] == s[c]
    s_mm, _ = o.qparams("minmax")
    for method, kw in [("l2", {}), ("percentile", {"percentile": 99.9}), ("mse", {}),
                       ("entropy", {})]:
        sm, _ = o.qparams(method, **kw)
        assert (sm < s_mm).all(), method  # every method clips the outlier
    with pytest.raises(litecomp.ArgumentError, match="^method"):
        o.qparams("median")


# ------------------------------------------------------------------ NF4 / FP4
@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16])
def test_4bit_matches_reference(fmt, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((33, 129)).astype(dtype)  # odd size: a half-filled last byte
    x[3, :64] = 0  # an all-zero block
    q = Q.quantize_4bit(x, fmt)
    data, am = ref.blockwise4(x, 64, cb.CODEBOOKS[fmt])
    np.testing.assert_array_equal(q.data, data)
    np.testing.assert_array_equal(q.absmax, am)
    y = q.dequantize()
    assert y.shape == x.shape
    codes = cb.CODEBOOKS[fmt]
    hi, lo = data >> 4, data & 15
    flat = np.stack([hi, lo], 1).reshape(-1)[:x.size]
    np.testing.assert_array_equal(y.reshape(-1), codes[flat] * np.repeat(am, 64)[:x.size])


def test_4bit_known_codes_and_double_quant():
    x = np.array([1.0, -1.0, 0.0, 0.5] + [0.0] * 60, np.float32)
    q = Q.quantize_4bit(x)
    assert q.data[0] == 0xF0 and q.data[1] == 0x7C  # 1.0 -> 15 (high), -1.0 -> 0; 0 -> 7, 0.5 -> 12
    rng = np.random.default_rng(6)
    w = rng.standard_normal(64 * 1000).astype(np.float32)
    plain, dq = Q.quantize_4bit(w), Q.quantize_4bit(w, double_quant=True)
    np.testing.assert_array_equal(plain.data, dq.data)
    assert dq.nbytes < plain.nbytes
    np.testing.assert_allclose(dq.block_absmax(), plain.absmax, rtol=0.02)
    e1 = Q.error_report("w", w, plain.dequantize()).sqnr_db
    e2 = Q.error_report("w", w, dq.dequantize()).sqnr_db
    assert e1 > 18 and abs(e1 - e2) < 0.5
    assert len(np.unique(cb.dynamic_map())) == 256
    with pytest.raises(litecomp.ArgumentError, match="^block_size"):
        Q.quantize_4bit(w, block_size=63)
    with pytest.raises(litecomp.NonFiniteError):
        Q.quantize_4bit(np.array([np.nan, 1.0], np.float32))


# ------------------------------------------------------------------ k-means
def test_kmeans_deterministic_and_zero_preserving():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    w[np.abs(w) < 0.6] = 0  # about half pruned
    q = Q.codebook_quantize(w, 4)
    y = q.dequantize()
    assert (y[w == 0] == 0).all() and (y[w != 0] != 0).all()
    assert len(np.unique(y)) <= 16
    assert Q.error_report("w", w, y).sqnr_db > 20
    outs = same_for_all_paths(lambda: Q.codebook_quantize(w, 4).indices.tobytes())
    assert len({o for _, o in outs}) == 1
    s = Q.codebook_quantize(w, 4, sparse=True)
    ys = s.dequantize()
    assert (ys[w == 0] == 0).all() and s.nbytes < q.nbytes
    pc = Q.codebook_quantize(w, 2, axis=0)
    assert pc.codebook.shape == (64, 4) and (pc.dequantize()[w == 0] == 0).all()
    # the C assignment equals the reference, and Lloyd converged: every centroid is the
    # mean of the values assigned to it
    cent, idx = Q.kmeans_1d(w[w != 0], 8, iters=2000)
    vals = w[w != 0]
    ridx, rsums, rcounts = ref.kmeans_assign(vals, cent)
    np.testing.assert_array_equal(idx, ridx)
    for j in range(8):
        if (idx == j).any():
            assert abs(vals[idx == j].mean() - cent[j]) < 1e-5


# ------------------------------------------------------------------ state dicts
def test_quantize_state_dict_roundtrip(tmp_path):
    sd = litecomp.examples.tiny_decoder_lm()
    recipe = {"*linear1.weight": {"format": "nf4"},
              "re:.*linear2\\.weight": {"format": "kmeans", "bits": 4},
              "embed.weight": "skip",
              "*.weight": {"bits": 4, "group_size": 32, "scheme": "affine"}}
    out, report = Q.quantize_state_dict(sd, recipe)
    names = {e.name for e in report}
    assert "embed.weight" not in names and "fc.weight" in names
    assert "transformer_decoder.layers.0.norm1.weight" not in names  # 1-D
    assert all(e.sqnr_db > 15 and e.cosine > 0.98 for e in report)
    path = litecomp.save(out, tmp_path / "q.safetensors")
    back = Q.dequantize_state_dict(litecomp.load(path))
    assert list(back) == list(sd)
    for name in sd:
        assert back[name].shape == sd[name].shape
        if name not in names:
            np.testing.assert_array_equal(back[name], sd[name])
    e = Q.error_report("fc.weight", sd["fc.weight"], back["fc.weight"])
    xx, yy, xy, ee, maxe = qref.error_stats(sd["fc.weight"], back["fc.weight"])
    np.testing.assert_allclose(e.cosine, xy / np.sqrt(xx * yy), rtol=1e-12)
    ref = np.asarray(sd["fc.weight"], np.float64)
    d = ref - back["fc.weight"]
    np.testing.assert_allclose(e.sqnr_db, 10 * np.log10((ref ** 2).sum() / (d ** 2).sum()),
                               rtol=1e-9)
    assert e.max_abs_err == np.abs(d).max()
    with pytest.raises(litecomp.ArgumentError, match="^recipe"):
        Q.quantize_state_dict(sd, {"*": {"bitz": 4}})


def test_dequantized_state_dict_loads_into_torch():
    torch = pytest.importorskip("torch")
    from litecomp.torch import DecoderLM, load_numpy_state_dict
    sd = litecomp.examples.tiny_decoder_lm()
    out, _ = Q.quantize_state_dict(sd, {"*": {"bits": 8, "axis": 0}})
    model = DecoderLM(vocab=1000, d_model=64, heads=4, layers=2, ffn=128)
    load_numpy_state_dict(model, Q.dequantize_state_dict(out))
    ref = DecoderLM(vocab=1000, d_model=64, heads=4, layers=2, ffn=128)
    load_numpy_state_dict(ref, sd)
    tokens = torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        a, b = model(tokens), ref(tokens)
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), 0) > 0.999


# ------------------------------------------------------------------ CLI
def test_quantize_cli(tmp_path, capsys):
    from litecomp.cli import main
    src = litecomp.save(litecomp.examples.tiny_decoder_lm(), tmp_path / "m.safetensors")
    assert main(["quantize", src, str(tmp_path / "q4.safetensors"), "--bits", "4",
                 "--group-size", "32", "--layers", "*linear*"]) == 0
    text = capsys.readouterr().out
    assert "linear1.weight" in text and "SQNR" in text and "4 tensors quantized" in text
    q = litecomp.load(tmp_path / "q4.safetensors")
    assert "transformer_decoder.layers.0.linear1.weight.qdata" in q
    # nf4/fp4's absmax block is --block-size; --group-size is its deprecated spelling there
    capsys.readouterr()
    new, old = str(tmp_path / "nf4-new.safetensors"), str(tmp_path / "nf4-old.safetensors")
    assert main(["quantize", src, new, "--format", "nf4", "--block-size", "32"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    assert main(["quantize", src, old, "--format", "nf4", "--group-size", "32"]) == 0
    assert "--group-size with --format nf4 is deprecated; use --block-size" in \
        capsys.readouterr().err
    a, b = litecomp.load(new), litecomp.load(old)
    assert list(a) == list(b) and all(a[k].tobytes() == b[k].tobytes() for k in a)
    default = str(tmp_path / "nf4-64.safetensors")
    assert main(["quantize", src, default, "--format", "nf4"]) == 0
    assert litecomp.load(default)["fc.weight.absmax"].size * 2 == a["fc.weight.absmax"].size
    assert main(["quantize", src, new, "--bits", "4", "--block-size", "32"]) == 1
    assert "--block-size: only nf4 and fp4" in capsys.readouterr().err
    assert main(["quantize", src, str(tmp_path / "m.gguf"), "--format", "gguf:Q8_0"]) == 0
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert {t.name for t in r.tensors} == set(litecomp.load(src))
    assert main(["quantize", src, str(tmp_path / "k.safetensors"), "--format", "kmeans",
                 "--bits", "4", "--quiet"]) == 0
    back = Q.dequantize_state_dict(litecomp.load(tmp_path / "k.safetensors"))
    assert len(np.unique(back["fc.weight"])) <= 16
    assert main(["quantize", src, str(tmp_path / "x.safetensors"), "--bits", "7"]) == 1
    assert "bits" in capsys.readouterr().err


def test_sparse_codebook_uses_the_sparse_bitmask_layout():
    rng = np.random.default_rng(8)
    w = rng.standard_normal((5, 21)).astype(np.float32)
    w[np.abs(w) < 0.5] = 0
    c = Q.codebook_quantize(w, 3, sparse=True)
    np.testing.assert_array_equal(c.mask, np.packbits(w != 0, axis=-1, bitorder="little"))
    y = c.dequantize()
    assert (y[w == 0] == 0).all()
    assert len(np.unique(y[w != 0])) <= 8
    sd = c.to_state_dict("w")
    np.testing.assert_array_equal(Q.load_quantized(sd, "w").dequantize(), y)


def test_4bit_threads_and_simd_identical():
    x = litecomp.random.normal(64 * 5000 + 3, seed=9)
    outs = same_for_all_paths(lambda: (lambda q: q.data.tobytes() + q.absmax.tobytes())(
        Q.quantize_4bit(x)))
    assert len({o for _, o in outs}) == 1


# Golden bytes from bitsandbytes 0.50.2 (bitsandbytes.functional.quantize_4bit on CPU,
# blocksize 64) for litecomp.random.normal(320, seed=3) with values 64..127 zeroed, and
# hashes of its double-quantized state and create_dynamic_map(signed=True).
BNB = {
    "nf4": "2ee2907645455d297b2d4647e94badf5124721de59d13557d873233d8f8637997777777777777777"
           "777777777777777777777777777777777777777777777777c456c4d3b70720aaa67bde35b7be011f"
           "544a485a17d1966bc87b50bdb378b6398b94c417ae6524c346a64bb54496a437a736c47bbcc954c9"
           "e74af88e8d7593d75d4b938a4ca05ac955be614ee9cf23b44c912c7e3525d7474c2540d54f8a903b",
    "fp4": "d22d6b1efecef5a694d5f9c126f4723eadf9aa52e65acee1219cdcc51319d16600000000000000000"
           "000000000000000000000000000000000000000000000005fee5f2d49b1db777e1422df4142baa3ec"
           "c7f6f7a92a69945114eb424c1149c6146c5ca9729fdc5dce7ef44efc697fc979ce5f944456ef5629f7"
           "3662158f6d51e5f46c17f47bf756ee429af22643dc4fc56ad512cfde21f9f5dfcb2ef3176bc4",
    "absmax": [2.0943055152893066, 0.0, 2.0973947048187256, 3.170881509780884, 2.649449586868286],
    "double_quant_sha256": "aecc8208f8b0322dd5d96e6b4cc0fd369e419213e0c41db5cf54eae17a53089c",
    "dynamic_map_sha256": "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c",
}


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_4bit_bytes_equal_bitsandbytes(fmt):
    import hashlib
    x = litecomp.random.normal(320, seed=3)
    x[64:128] = 0
    q = Q.quantize_4bit(x, fmt)
    assert q.data.tobytes().hex() == BNB[fmt]
    np.testing.assert_array_equal(q.absmax, np.asarray(BNB["absmax"], np.float32))
    w = litecomp.random.normal(64 * 600, seed=4)
    d = Q.quantize_4bit(w, "nf4", double_quant=True)
    blob = d.data.tobytes() + d.absmax_q.tobytes() + d.absmax_scale.tobytes() + \
        d.absmax_offset.tobytes()
    assert hashlib.sha256(blob).hexdigest() == BNB["double_quant_sha256"]
    assert hashlib.sha256(cb.dynamic_map().tobytes()).hexdigest() == BNB["dynamic_map_sha256"]


def test_4bit_live_bitsandbytes_parity():
    torch = pytest.importorskip("torch")
    F = pytest.importorskip("bitsandbytes.functional")
    x = np.random.default_rng(11).standard_normal((32, 192)).astype(np.float32)
    for fmt in ("nf4", "fp4"):
        qt, st = F.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type=fmt)
        q = Q.quantize_4bit(x, fmt)
        np.testing.assert_array_equal(q.data, qt.numpy().reshape(-1))
        np.testing.assert_array_equal(q.dequantize(), F.dequantize_4bit(qt, st).numpy())
