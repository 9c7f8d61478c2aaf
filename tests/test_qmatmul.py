import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import qmatmul as qm
from litecomp.reference import qmatmul as ref

PATHS = qm.available_paths()


def rand(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def exact(a, b):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


# ------------------------------------------------------------------ int8 dynamic
@pytest.mark.parametrize("M,N,K", [(1, 1, 1), (1, 17, 3), (2, 16, 4), (3, 15, 5), (5, 64, 31),
                                   (17, 65, 33), (64, 100, 100), (65, 33, 257), (130, 70, 64),
                                   (512, 20, 40)])
@pytest.mark.parametrize("bias", [False, True])
def test_int8_every_path_equals_reference(M, N, K, bias):
    W = rand((N, K), 1)
    b = rand(N, 2) if bias else None
    x = rand((M, K), 3)
    L = qm.Int8Linear.from_float(W, b)
    want = ref.int8_linear(x, L.qweight, L.scales, b)
    for p in PATHS:
        exact(L(x, path=p), want)


def test_int8_accumulation_is_exact_at_large_k():
    """K = 16384 with extreme values: acc up to 16384*127*127; every path must hold it in int32
    exactly (checked against int64) -- including vpdpbusd's u8 offset and compensation."""
    K, N = 16384, 20
    rng = np.random.default_rng(5)
    q = rng.choice(np.array([-127, 127, -1, 0, 1], np.int8), size=(N, K))
    q[0] = 127
    q[1] = -127
    s = np.full(N, 1.0, np.float32)
    L = qm.Int8Linear(q, s)
    x = np.full((2, K), 1.0, np.float32)  # quantizes to exactly 127
    x[1, ::2] = -1.0
    acc = (q.astype(np.int64) @ np.rint(x * 127).astype(np.int64).T).T
    for p in PATHS:
        y = L(x, path=p)
        # y = acc * (sx * 1) with sx = 1/127 in float32; undo exactly in float64
        sx = np.float32(1.0) / np.float32(127)
        np.testing.assert_array_equal(y, (acc.astype(np.float32) * sx).astype(np.float32))
    assert abs(acc).max() == 16384 * 127 * 127


def test_int8_close_to_float_matmul():
    W = rand((256, 512), 7, 0.05)
    x = rand((8, 512), 8)
    L = qm.Int8Linear.from_float(W)
    y = L(x)
    want = x @ W.T
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < 0.02  # two int8 roundings, ~1%


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_input_dtypes_and_layouts(dtype):
    W = rand((40, 96), 1)
    L = qm.Int8Linear.from_float(W)
    x = rand((6, 96), 2).astype(dtype)
    want = L(x.astype(np.float32))
    exact(L(x), want)
    xs = np.asfortranarray(rand((96, 6), 3)).T  # non-contiguous view
    exact(L(xs), L(np.ascontiguousarray(xs)))
    x3 = rand((2, 3, 96), 4)
    y3 = L(x3)
    assert y3.shape == (2, 3, 40)
    exact(y3.reshape(6, 40), L(x3.reshape(6, 96)))


def test_unpacked_weight_roundtrips():
    W = rand((33, 70), 9)
    L = qm.Int8Linear.from_float(W)
    L2 = qm.Int8Linear(L.qweight, L.scales)
    np.testing.assert_array_equal(L2._packed, L._packed)
    np.testing.assert_allclose(L.dequantize(), W, atol=np.abs(W).max() / 127)


def test_thread_counts_give_identical_results():
    W = rand((300, 200), 1)
    x = rand((70, 200), 2)
    layers = [qm.Int8Linear.from_float(W), qm.BlockLinear.from_float(W, bits=4, group_size=64),
              qm.NF4Linear.from_float(W)]
    for L in layers:
        with litecomp.threads(1):
            want = L(x)
        for n in (2, 3, 8):
            with litecomp.threads(n):
                exact(L(x), want)


# ------------------------------------------------------------------ 4/8-bit blocks
@pytest.mark.parametrize("bits,gs,scheme", [(4, 32, "symmetric"), (4, 64, "affine"),
                                            (4, 128, "symmetric"), (8, 32, "symmetric"),
                                            (8, 96, "affine")])
@pytest.mark.parametrize("M,N,K", [(1, 16, 32), (1, 37, 200), (3, 17, 129), (9, 64, 256)])
def test_block_every_path_equals_reference(bits, gs, scheme, M, N, K):
    W = rand((N, K), 11)
    b = rand(N, 12)
    x = rand((M, K), 13)
    B = qm.BlockLinear.from_float(W, bits=bits, group_size=gs, scheme=scheme, bias=b)
    want = ref.block_linear(x, B.codes, B.scales, B.zeros, B.offsets, gs, b)
    for p in PATHS:
        exact(B(x, path=p), want)
    deq = x @ B.dequantize().T + b
    assert np.linalg.norm(B(x) - deq) / np.linalg.norm(deq) < 0.02  # int8 activations


def test_block_quantization_error_is_int4_sized():
    W = rand((128, 512), 3, 0.02)
    B = qm.BlockLinear.from_float(W, bits=4, group_size=128)
    err = np.abs(B.dequantize() - W).max()
    assert err <= np.abs(W).max() / 7 / 2 * 1.001


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_blocks_match_the_gguf_package(qtype):
    gguf = pytest.importorskip("gguf")
    t = getattr(gguf.GGMLQuantizationType, qtype)
    W = rand((45, 256), 21)
    W[3, :32] = 0.0  # an all-zero block
    data = gguf.quants.quantize(W, t)
    B = qm.BlockLinear.from_gguf(data, qtype, W.shape)
    deq = gguf.quants.dequantize(data, t)
    np.testing.assert_array_equal(B.dequantize(), deq)
    x = rand((4, 256), 22)
    want = ref.block_linear(x, B.codes, B.scales, B.zeros, B.offsets, 32)
    for p in PATHS:
        exact(B(x, path=p), want)
    assert np.linalg.norm(B(x) - x @ deq.T) / np.linalg.norm(x @ deq.T) < 0.02


# ------------------------------------------------------------------ NF4
def test_nf4_paths_reference_and_bitsandbytes_layout():
    W = rand((50, 192), 31)
    b = rand(50, 32)
    F = qm.NF4Linear.from_float(W, bias=b)
    x = rand((5, 192), 33)
    want = ref.nf4_linear(x, F.codes, F.absmax, qm.NF4_TABLE, 64, b)
    for p in PATHS:
        exact(F(x, path=p), want)
    np.testing.assert_allclose(F(x), x @ F.dequantize().T + b, rtol=1e-4, atol=1e-4)
    # bitsandbytes packs the flattened weight, first element in the high nibble
    flat = F.codes.reshape(-1)
    packed = (flat[0::2] << 4) | flat[1::2]
    F2 = qm.NF4Linear.from_bitsandbytes(packed, F.absmax.reshape(-1), W.shape, bias=b)
    np.testing.assert_array_equal(F2.codes, F.codes)
    # nearest-code rounding: the error is at most half the widest gap times absmax
    gap = np.diff(qm.NF4_TABLE).max() / 2
    assert (np.abs(F.dequantize() - W) <= gap * np.repeat(F.absmax, 64, axis=1) + 1e-6).all()


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    L = qm.Int8Linear.from_float(rand((4, 8)))
    with pytest.raises(litecomp.ShapeError, match="x: last dimension must be in_features=8"):
        L(rand((2, 7)))
    x = rand((2, 8))
    x[1, 3] = np.nan
    with pytest.raises(litecomp.NonFiniteError, match="x"):
        L(x)
    with pytest.raises(litecomp.NonFiniteError, match="weight"):
        qm.Int8Linear.from_float(np.array([[np.inf, 1.0]], np.float32))
    with pytest.raises(litecomp.ShapeError, match="in_features 70000 exceeds 65536"):
        qm.Int8Linear.from_float(np.zeros((1, 70000), np.float32))
    with pytest.raises(litecomp.ArgumentError, match="group_size: must be a multiple of 32"):
        qm.BlockLinear.from_float(rand((4, 64)), group_size=48)
    with pytest.raises(litecomp.ArgumentError, match="bits"):
        qm.BlockLinear.from_float(rand((4, 64)), bits=3)
    with pytest.raises(litecomp.ArgumentError, match="path"):
        L(rand((1, 8)), path="neon")
    with pytest.raises(litecomp.FormatError, match="data: Q4_0"):
        qm.BlockLinear.from_gguf(np.zeros(17, np.uint8), "Q4_0", (1, 32))
    with pytest.raises(litecomp.ShapeError, match="bias"):
        qm.Int8Linear.from_float(rand((4, 8)), bias=np.zeros(3, np.float32))
    with pytest.raises(litecomp.ArgumentError, match="w: expected"):
        qm.linear(rand((1, 8)), rand((4, 8)))


def test_linear_function_and_bias_override():
    W, b = rand((12, 64), 1), rand(12, 2)
    x = rand((3, 64), 3)
    L = qm.Int8Linear.from_float(W)
    exact(qm.linear(x, L, b), qm.Int8Linear.from_float(W, b)(x))
    assert qm.linear(np.zeros((0, 64), np.float32), L).shape == (0, 12)


# ------------------------------------------------------------------ torch module swap
def test_quantize_model_swaps_linears_and_state_dict_roundtrips(tmp_path):
    torch = pytest.importorskip("torch")
    import litecomp.torch as lt
    torch.manual_seed(0)
    m = lt.DecoderLM(500, 64, 4, 2, 128).eval()
    tok = torch.randint(0, 500, (2, 7))
    with torch.no_grad():
        want = m(tok)
    for bits, tol in ((8, 0.02), (4, 0.15)):
        q = lt.quantize_model(m, bits=bits, group_size=32, inplace=False).eval()
        assert q._litecomp_quantized == [
            "transformer_decoder.layers.0.linear1", "transformer_decoder.layers.0.linear2",
            "transformer_decoder.layers.1.linear1", "transformer_decoder.layers.1.linear2", "fc"]
        assert isinstance(q.transformer_decoder.layers[0].self_attn.out_proj, torch.nn.Linear)
        with torch.no_grad():
            got = q(tok)
        assert ((got - want).norm() / want.norm()).item() < tol
        path = tmp_path / f"q{bits}.pt"
        torch.save(q.state_dict(), path)
        q2 = lt.quantize_model(lt.DecoderLM(500, 64, 4, 2, 128), bits=bits, group_size=32).eval()
        q2.load_state_dict(torch.load(path, weights_only=True))
        with torch.no_grad():
            assert torch.equal(q2(tok), got)
        # the float fallback (autograd / other devices) agrees with the kernel closely
        lin = q.fc
        x = torch.randn(3, 64)
        with torch.no_grad():
            fast = lin(x)
        slow = lin(x.requires_grad_())
        assert ((fast - slow).norm() / slow.norm()).item() < 0.02


def test_quantize_model_layer_pattern_and_sizes():
    torch = pytest.importorskip("torch")
    import litecomp.torch as lt
    m = lt.DecoderLM(500, 64, 4, 2, 128)
    q = lt.quantize_model(m, bits=4, group_size=64, targets="fc")
    assert q._litecomp_quantized == ["fc"]
    assert q.fc.qweight.dtype == torch.uint8 and tuple(q.fc.qweight.shape) == (500, 32)
    assert tuple(q.fc.scales.shape) == (500, 1)
    with pytest.raises(litecomp.ArgumentError, match="bits"):
        lt.QuantLinear(4, 4, bits=3)


def test_accuracy_script_small_decoder():
    pytest.importorskip("torch")
    from benchmarks.qmatmul_accuracy import decoder_errors
    rows = dict((name, err) for name, err, _agree, _t in decoder_errors(small=True))
    assert rows["int8 per-channel"] < 0.03
    assert rows["int4 g128"] < 0.2


# ------------------------------------------------------------------ litecomp.quant.linear
@pytest.mark.parametrize("kw,kind", [
    (dict(bits=8, axis=0), "Int8Linear"), (dict(bits=8), "Int8Linear"),
    (dict(bits=8, axis=0, scheme="affine"), "BlockLinear"),
    (dict(bits=4, group_size=64), "BlockLinear"), (dict(bits=4, group_size=32, scheme="affine"), "BlockLinear"),
    (dict(bits=2, group_size=32), "BlockLinear"), (dict(bits=6, axis=0), "BlockLinear"),
])
def test_quant_linear_on_qtensors(kw, kind):
    import litecomp.quant as Q
    W = rand((40, 192), 41)
    x = rand((3, 192), 42)
    q = Q.quantize(W, **kw)
    layer = Q.prepare_linear(q)
    assert type(layer).__name__ == kind
    np.testing.assert_array_equal(layer.dequantize(), q.dequantize())  # the same weight
    y = Q.linear(x, q)
    exact(y, layer(x))
    cached = q.__dict__["_qmatmul_cache"][1]
    exact(Q.linear(x, q), y)
    assert q.__dict__["_qmatmul_cache"][1] is cached  # packed once, reused
    deq = x @ q.dequantize().T
    assert np.linalg.norm(y - deq) / np.linalg.norm(deq) < 0.02


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_quant_linear_on_4bit_codebooks(fmt):
    import litecomp.quant as Q
    W = rand((33, 128), 51)
    x = rand((2, 128), 52)
    q4 = Q.quantize_4bit(W, fmt)
    np.testing.assert_array_equal(Q.prepare_linear(q4).dequantize(), q4.dequantize())
    np.testing.assert_allclose(Q.linear(x, q4), x @ q4.dequantize().T, rtol=1e-4, atol=1e-4)


def test_quant_linear_gguf_and_errors():
    import litecomp.quant as Q
    W = rand((16, 64), 61)
    x = rand((2, 64), 62)
    d = Q.gguf.quantize(W, "Q8_0")
    y = Q.linear(x, d, qtype="Q8_0", shape=W.shape)
    np.testing.assert_allclose(y, x @ Q.gguf.dequantize(d, "Q8_0").T, rtol=0.02, atol=0.05)
    with pytest.raises(litecomp.ArgumentError, match="group_size 16 is not a multiple of 32"):
        Q.linear(x, Q.quantize(W, 4, group_size=16))
    with pytest.raises(litecomp.ArgumentError, match="axis 1"):
        Q.linear(x, Q.quantize(W, 8, axis=1))
    with pytest.raises(litecomp.ShapeError, match="2-D"):
        Q.linear(x, Q.quantize(rand((2, 4, 64)), 8))
    with pytest.raises(litecomp.ArgumentError, match="shape: needed"):
        Q.linear(x, d, qtype="Q8_0")


def test_c_entry_points_reject_a_non_array_bias():
    """Bypassing the Python layer with a list for bias is an ArgumentError, not a
    SystemError or a misread."""
    from litecomp import _C
    with pytest.raises(litecomp.ArgumentError, match="bias: expected an array or None"):
        _C.qmm_i8_linear(np.zeros((1, 4), np.float32), np.zeros(64, np.int8),
                         np.zeros(16, np.int32), np.zeros(16, np.float32), [1.0],
                         np.zeros((1, 1), np.float32), 1, 4)
    with pytest.raises(litecomp.ShapeError, match="bias: has 2 elements, expected 1"):
        _C.qmm_i8_linear(np.zeros((1, 4), np.float32), np.zeros(64, np.int8),
                         np.zeros(16, np.int32), np.zeros(16, np.float32),
                         np.zeros(2, np.float32), np.zeros((1, 1), np.float32), 1, 4)
