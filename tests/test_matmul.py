import ml_dtypes
import numpy as np
import pytest

import litecomp
import litecomp.quant as Q
from litecomp.quant import matmul as qm
from litecomp.reference import matmul as ref
from litecomp.reference import quant as qref

PATHS = qm.available_paths()


def int8(W, b=None):
    """int8 symmetric per output channel (quant.quantize's scale amax / 127.5)."""
    return Q.prepare_linear(Q.quantize(W, 8, axis=0), bias=b)


def block(W, bits=4, group_size=128, scheme="symmetric", bias=None):
    """Groups along K; in_features need not be a multiple of group_size (last group shorter)."""
    q, k = qm.quantize_rows(W, bits, group_size=group_size, scheme=scheme)
    return qm.BlockLinear.from_rows(q.data, bits, (W.shape[0], k), q.scales, q.zero_points,
                                    group_size=group_size, bias=bias, kind=scheme)


def nf4(W, bias=None):
    """NF4 blocks of 64 along K (the rows zero-padded to a multiple of 64)."""
    k = W.shape[1]
    q4 = Q.quantize_4bit(np.pad(W, ((0, 0), (0, -k % 64))), "nf4")
    return qm.NF4Linear._from_quant4(q4, bias, k)


def independent_groups(W, bits, gs, scheme):
    """Groups of gs along K (the last one shorter), each quantized from the definition:
    torch.ao's qparams over the group's [min, max] (reference.quant.calc_qparams, unsigned
    codes [0, 2**bits - 1], symmetric zero point 2**(bits-1)), codes clamp(rint(w / s) + zp),
    weight (code - zp) * s.  Returns (codes, scales, zeros, weight)."""
    n, k = W.shape
    g = -(-k // gs)
    codes = np.zeros((n, k), np.int64)
    scales = np.zeros((n, g), np.float32)
    zeros = np.zeros((n, g), np.int64)
    for j in range(g):
        seg = W[:, j * gs:(j + 1) * gs]
        s, z = qref.calc_qparams(seg.min(1), seg.max(1), 0, 2 ** bits - 1, scheme, 2 ** (bits - 1))
        inv = (np.float32(1) / s)[:, None]
        codes[:, j * gs:(j + 1) * gs] = np.clip(np.rint(seg * inv) + z[:, None], 0, 2 ** bits - 1)
        scales[:, j], zeros[:, j] = s, z
    cols = np.arange(k) // gs
    weight = ((codes - zeros[:, cols]).astype(np.float32) * scales[:, cols]).astype(np.float32)
    return codes, scales, zeros, weight


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
    L = int8(W, b)
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
    L = int8(W)
    y = L(x)
    want = x @ W.T
    assert np.linalg.norm(y - want) / np.linalg.norm(want) < 0.02  # two int8 roundings, ~1%


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float64])
def test_input_dtypes_and_layouts(dtype):
    W = rand((40, 96), 1)
    L = int8(W)
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
    L = int8(W)
    L2 = qm.Int8Linear(L.qweight, L.scales)
    np.testing.assert_array_equal(L2._packed, L._packed)
    np.testing.assert_allclose(L.dequantize(), W, atol=np.abs(W).max() / 127)


def test_thread_counts_give_identical_results():
    W = rand((300, 200), 1)
    x = rand((70, 200), 2)
    layers = [int8(W), block(W, 4, 64),
              nf4(W)]
    for L in layers:
        with litecomp.threads(1):
            want = L(x)
        for n in (2, 3, 8):
            with litecomp.threads(n):
                litecomp._C.team_probe()
                exact(L(x), want)
                assert litecomp._C.team_probe() == n  # M*N*K = 4.2M: the threads split it


# ------------------------------------------------------------------ 4/8-bit blocks
@pytest.mark.parametrize("bits,gs,scheme", [(4, 32, "symmetric"), (4, 64, "affine"),
                                            (4, 128, "symmetric"), (8, 32, "symmetric"),
                                            (8, 96, "affine")])
@pytest.mark.parametrize("M,N,K", [(1, 16, 32), (1, 37, 200), (3, 17, 129), (9, 64, 256)])
def test_block_every_path_equals_reference(bits, gs, scheme, M, N, K):
    W = rand((N, K), 11)
    b = rand(N, 12)
    x = rand((M, K), 13)
    B = block(W, bits, gs, scheme, b)
    # the layer holds the weight the definition gives, computed here without litecomp.quant
    codes, scales, zeros, deq_w = independent_groups(W, bits, gs, scheme)
    np.testing.assert_array_equal(B.codes, codes)
    np.testing.assert_array_equal(B.scales, scales)
    np.testing.assert_array_equal(B.zeros, zeros)
    exact(B.dequantize(), deq_w)
    want = ref.block_linear(x, codes, scales, zeros, None, gs, b)
    for p in PATHS:
        exact(B(x, path=p), want)
    deq = x @ deq_w.T + b
    # int8 activations per 32 values: measured 0.0049-0.0056 relative over these cases
    assert np.linalg.norm(B(x) - deq) / np.linalg.norm(deq) < 0.01


def test_block_quantization_error_is_int4_sized():
    W = rand((128, 512), 3, 0.02)
    B = block(W, 4, 128)
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
    F = nf4(W, b)
    x = rand((5, 192), 33)
    want = ref.nf4_linear(x, F.codes, F.absmax, Q.codebook.NF4, 64, b)
    for p in PATHS:
        exact(F(x, path=p), want)
    np.testing.assert_allclose(F(x), x @ F.dequantize().T + b, rtol=1e-4, atol=1e-4)
    # bitsandbytes' bytes (quantize_4bit's, which equal bitsandbytes' own: test_quant_formats)
    q4 = Q.quantize_4bit(W, "nf4")
    F2 = qm.NF4Linear.from_bitsandbytes(q4.data, q4.absmax, W.shape, bias=b)
    np.testing.assert_array_equal(F2.codes, F.codes)
    exact(F2.dequantize(), q4.dequantize())
    # nearest-code rounding: the error is at most half the widest gap times absmax
    gap = np.diff(Q.codebook.NF4).max() / 2
    assert (np.abs(F.dequantize() - W) <= gap * np.repeat(F.absmax, 64, axis=1) + 1e-6).all()


# ------------------------------------------------------------------ errors
def test_errors_name_the_argument():
    L = int8(rand((4, 8)))
    with pytest.raises(litecomp.ShapeError, match="x: last dimension must be in_features=8"):
        L(rand((2, 7)))
    x = rand((2, 8))
    x[1, 3] = np.nan
    with pytest.raises(litecomp.NonFiniteError, match="x"):
        L(x)
    with pytest.raises(litecomp.NonFiniteError, match="x"):
        int8(np.array([[np.inf, 1.0]], np.float32))
    with pytest.raises(litecomp.ShapeError, match="in_features 70000 exceeds 65536"):
        int8(np.zeros((1, 70000), np.float32))
    with pytest.raises(litecomp.ArgumentError, match="group_size: must be a multiple of 32"):
        block(rand((4, 64)), 4, 48)
    with pytest.raises(litecomp.ArgumentError, match="bits"):
        qm.BlockLinear(np.zeros((4, 64), np.uint8), np.ones((4, 2)), np.zeros((4, 2)), bits=3,
                       group_size=32)
    with pytest.raises(litecomp.ArgumentError, match=r"codes: 4-bit codes must be in \[0, 15\]"):
        qm.BlockLinear(np.full((4, 64), 16, np.uint8), np.ones((4, 2)), np.zeros((4, 2)),
                       bits=4, group_size=32)
    with pytest.raises(litecomp.ArgumentError, match="path"):
        L(rand((1, 8)), path="neon")
    with pytest.raises(litecomp.FormatError, match="data: Q4_0"):
        qm.BlockLinear.from_gguf(np.zeros(17, np.uint8), "Q4_0", (1, 32))
    with pytest.raises(litecomp.ShapeError, match="bias"):
        int8(rand((4, 8)), np.zeros(3, np.float32))
    with pytest.raises(litecomp.ArgumentError, match="q: expected a QTensor"):
        Q.linear(rand((1, 8)), rand((4, 8)))


def test_linear_function_and_bias_override():
    W, b = rand((12, 64), 1), rand(12, 2)
    x = rand((3, 64), 3)
    L = int8(W)
    exact(Q.linear(x, L, b), int8(W, b)(x))
    assert Q.linear(np.zeros((0, 64), np.float32), L).shape == (0, 12)


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
    cached = q.__dict__["_linear_cache"][1]
    exact(Q.linear(x, q), y)
    assert q.__dict__["_linear_cache"][1] is cached  # packed once, reused
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
        _C.matmul_i8_linear(np.zeros((1, 4), np.float32), np.zeros(64, np.int8),
                         np.zeros(16, np.int32), np.zeros(16, np.float32), [1.0],
                         np.zeros((1, 1), np.float32), 1, 4)
    with pytest.raises(litecomp.ShapeError, match="bias: has 2 elements, expected 1"):
        _C.matmul_i8_linear(np.zeros((1, 4), np.float32), np.zeros(64, np.int8),
                         np.zeros(16, np.int32), np.zeros(16, np.float32),
                         np.zeros(2, np.float32), np.zeros((1, 1), np.float32), 1, 4)


# ------------------------------------------------------------------ packing: layouts and sources
LAYOUT, SOURCE = qm._LAYOUT, qm._SOURCE


@pytest.mark.parametrize("n", [1, 15, 16, 17, 33])
@pytest.mark.parametrize("k", [1, 3, 4, 31, 32, 33, 70])
@pytest.mark.parametrize("layout,top", [("i8", 256), ("blk4", 16), ("blk8", 256), ("nf4", 16)])
def test_pack_writes_the_reference_layout_and_unpack_inverts_it(n, k, layout, top):
    from litecomp import _C
    c = np.random.default_rng(n * 100 + k).integers(0, top, (n, k)).astype(np.uint8)
    if layout == "i8":
        w = c.view(np.int8)  # int8 weights as they are
        packed, rowsum = _C.matmul_pack(LAYOUT[layout], w, SOURCE["stream"], n, k, k, 8)
        np.testing.assert_array_equal(packed, ref.pack("i8", w))
        np.testing.assert_array_equal(rowsum, ref.rowsum(w))
        np.testing.assert_array_equal(_C.matmul_unpack(LAYOUT[layout], packed, n, k), w)
        # uint8 codes with zero point 128 are stored as code - 128
        packed, _ = _C.matmul_pack(LAYOUT[layout], c, SOURCE["stream"], n, k, k, 8)
        np.testing.assert_array_equal(packed, ref.pack("i8", (c.astype(np.int16) - 128).astype(np.int8)))
    else:
        packed = _C.matmul_pack(LAYOUT[layout], c, SOURCE["stream"], n, k, k, 8)
        np.testing.assert_array_equal(packed, ref.pack(layout, c))
        np.testing.assert_array_equal(_C.matmul_unpack(LAYOUT[layout], packed, n, k), c)
    a = np.random.default_rng(k).random((n, 3)).astype(np.float32)
    np.testing.assert_array_equal(_C.matmul_tile_params(a), ref.tile_params(a))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
def test_stream_source_reads_pack_codes_rows_in_place(bits):
    """Packing reads litecomp.quant.pack_codes rows directly, padded rows included."""
    from litecomp import _C
    rng = np.random.default_rng(bits)
    n, cols, k = 19, 75, 70  # rows of 75 codes, of which the layer uses 70
    codes = rng.integers(0, 1 << bits, (n, cols)).astype(np.uint8)
    rows = Q.pack_codes(codes, bits)
    np.testing.assert_array_equal(ref.source_codes("stream", rows, n, k, cols, bits), codes[:, :k])
    layout = "blk4" if bits <= 4 else "blk8"
    packed = _C.matmul_pack(LAYOUT[layout], rows, SOURCE["stream"], n, k, cols, bits)
    np.testing.assert_array_equal(packed, ref.pack(layout, codes[:, :k]))


def test_bitsandbytes_and_gguf_sources_read_in_place():
    from litecomp import _C
    W = rand((20, 128), 5)
    q4 = Q.quantize_4bit(W, "nf4")
    codes = ref.source_codes("bitsandbytes", q4.data, 20, 128, 128, 4)
    packed = _C.matmul_pack(LAYOUT["nf4"], q4.data, SOURCE["bitsandbytes"], 20, 128, 128, 4)
    np.testing.assert_array_equal(packed, ref.pack("nf4", codes))
    np.testing.assert_array_equal(Q.codebook.NF4[codes] * np.repeat(q4.absmax.reshape(20, 2), 64, 1),
                                  q4.dequantize())
    for qtype in ("Q4_0", "Q4_1", "Q8_0"):
        data = Q.gguf.quantize(W, qtype)
        layer = Q.prepare_linear(data, qtype=qtype, shape=W.shape)
        np.testing.assert_array_equal(layer.codes, ref.source_codes(qtype, data, 20, 128, 128,
                                                                    8 if qtype == "Q8_0" else 4))
        np.testing.assert_array_equal(layer.dequantize(), Q.gguf.dequantize(data, qtype))


@pytest.mark.parametrize("bits", [2, 3, 5, 6])
def test_narrow_codes_run_without_unpacking_and_match_unpacked_codes(bits):
    W, x = rand((37, 192), bits), rand((3, 192), 9)
    q = Q.quantize(W, bits, group_size=64, scheme="affine")
    layer = Q.prepare_linear(q)
    from_codes = qm.BlockLinear(q.codes(), q.scales, q.zero_points, bits=4 if bits <= 4 else 8,
                                group_size=64)
    np.testing.assert_array_equal(layer._packed, from_codes._packed)
    exact(layer(x), from_codes(x))


def test_source_size_and_range_errors():
    from litecomp import _C
    with pytest.raises(litecomp.FormatError, match="data: 2 rows of 32 codes need 32 bytes"):
        _C.matmul_pack(LAYOUT["blk4"], np.zeros(31, np.uint8), SOURCE["stream"], 2, 32, 32, 4)
    with pytest.raises(litecomp.ShapeError, match="data: GGUF blocks hold whole blocks of 32"):
        _C.matmul_pack(LAYOUT["blk4"], np.zeros(18, np.uint8), SOURCE["Q4_0"], 1, 16, 32, 4)
    with pytest.raises(litecomp.FormatError, match="data: 1 rows of 64 codes need 36 bytes"):
        _C.matmul_pack(LAYOUT["blk4"], np.zeros(18, np.uint8), SOURCE["Q4_0"], 1, 64, 64, 4)
    with pytest.raises(litecomp.ArgumentError, match="the i8 layout takes one byte per weight"):
        _C.matmul_pack(LAYOUT["i8"], np.zeros(32, np.uint8), SOURCE["stream"], 1, 64, 64, 4)
    with pytest.raises(litecomp.ArgumentError, match=r"codes: 4-bit codes must be in \[0, 15\]"):
        qm.NF4Linear(np.full((2, 8), 200, np.uint8), np.ones((2, 1)), block_size=8)
    with pytest.raises(litecomp.DTypeError, match="int8 values go to the i8 layout only"):
        _C.matmul_pack(LAYOUT["blk8"], np.zeros((1, 32), np.int8), SOURCE["stream"], 1, 32, 32, 8)


# ------------------------------------------------------------------ one rule for symmetric codes
def test_int8_layer_holds_torchs_quantize_dynamic_weight():
    """quant.quantize's symmetric rule (torch.ao's amax / 127.5) is the only one: the int8
    layer holds exactly the weight torch's quantize_dynamic holds, per channel and per tensor."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lin = torch.nn.Linear(300, 70)
    W = lin.weight.detach().numpy()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        per_channel = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(lin), {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8)[0].weight()
        per_tensor = torch.ao.quantization.quantize_dynamic(
            torch.nn.Sequential(lin), {torch.nn.Linear}, dtype=torch.qint8)[0].weight()
    L = int8(W)
    np.testing.assert_array_equal(L.qweight, per_channel.int_repr().numpy())
    np.testing.assert_array_equal(L.scales, per_channel.q_per_channel_scales().float().numpy())
    T = Q.prepare_linear(Q.quantize(W, 8))
    np.testing.assert_array_equal(T.qweight, per_tensor.int_repr().numpy())
    assert T.scales[0] == np.float32(per_tensor.q_scale())


def test_int4_symmetric_scale_is_absmax_over_7_5():
    """GPTQ's and compressed-tensors' int4 symmetric rule: s = absmax / 7.5, zero point 8."""
    W = rand((8, 64), 3)
    B = block(W, 4, 32)
    amax = np.abs(W.reshape(8, 2, 32)).max(axis=2)
    np.testing.assert_array_equal(B.scales, (amax / np.float32(7.5)).astype(np.float32))
    assert (B.zeros == 8).all() and B.codes.max() <= 15


# ------------------------------------------------------------------ old names, one release
def test_old_names_warn_and_still_work():
    W, x = rand((20, 100), 1), rand((2, 100), 2)
    with pytest.warns(DeprecationWarning, match="litecomp.qmatmul.Int8Linear is deprecated"):
        from litecomp.qmatmul import Int8Linear
    assert Int8Linear is qm.Int8Linear
    import litecomp.qmatmul as old
    with pytest.warns(DeprecationWarning, match="from_float"):
        L = qm.Int8Linear.from_float(W)
    exact(L(x), int8(W)(x))
    with pytest.warns(DeprecationWarning, match="from_float"):
        B = qm.BlockLinear.from_float(W, bits=4, group_size=32, scheme="affine")
    exact(B(x), block(W, 4, 32, "affine")(x))
    with pytest.warns(DeprecationWarning, match="from_float"):
        F = qm.NF4Linear.from_float(W)
    exact(F(x), nf4(W)(x))
    with pytest.warns(DeprecationWarning, match="NF4_TABLE"):
        assert old.NF4_TABLE is Q.codebook.NF4
    with pytest.warns(DeprecationWarning, match="litecomp.quant.linear"):
        exact(old.linear(x, L), Q.linear(x, L))
    with pytest.raises(litecomp.ArgumentError, match="w: expected"), pytest.warns(DeprecationWarning):
        old.linear(rand((1, 8)), rand((4, 8)))
    for was, now in (("avxvnni", "avx_vnni"), ("avx512vnni", "avx512_vnni")):
        with pytest.warns(DeprecationWarning, match=f"'{was}' is now spelled '{now}'"):
            if now in PATHS:
                exact(L(x, path=was), L(x, path=now))
            else:
                with pytest.raises(litecomp.ArgumentError, match=f"path: {now} .* not available"):
                    L(x, path=was)
    with pytest.warns(DeprecationWarning, match="avx_vnni"):
        assert litecomp.build_info()["avxvnni"] == litecomp.build_info()["avx_vnni"]
    # the errors the old quantizers raised, unchanged
    with pytest.raises(litecomp.NonFiniteError, match="weight"), pytest.warns(DeprecationWarning):
        qm.Int8Linear.from_float(np.array([[np.inf, 1.0]], np.float32))
    with pytest.raises(litecomp.ArgumentError, match="group_size: must be a multiple of 32"), \
            pytest.warns(DeprecationWarning):
        qm.BlockLinear.from_float(rand((4, 64)), group_size=48)


def test_import_litecomp_does_not_warn_and_quant_linear_is_the_function():
    import subprocess
    import sys
    code = ("import warnings, types; warnings.simplefilter('error');"
            "import litecomp, litecomp.quant, litecomp.quant.matmul; from litecomp import *;"
            "assert isinstance(litecomp.quant.linear, types.FunctionType)")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ QuantLinear on QTensors
def test_quant_linear_buffers_are_the_qtensor():
    """QuantLinear stores what quant.quantize returns (no second quantizer): 4-bit qweight is
    QTensor.data, scales and zeros its parameters; 8-bit qweight is the codes minus 128."""
    torch = pytest.importorskip("torch")
    import litecomp.torch as lt
    torch.manual_seed(1)
    lin = torch.nn.Linear(96, 24)
    W = lin.weight.detach().numpy()
    for scheme in ("symmetric", "affine"):
        m = lt.QuantLinear.from_linear(lin, bits=4, group_size=32, scheme=scheme)
        q = Q.quantize(W, 4, group_size=32, scheme=scheme)
        np.testing.assert_array_equal(m.qweight.numpy(), q.data)
        np.testing.assert_array_equal(m.scales.numpy(), q.scales)
        np.testing.assert_array_equal(m.zeros.numpy(), q.zero_points)
        x = torch.randn(3, 96)
        with torch.no_grad():
            exact(m(x).numpy(), Q.linear(x.numpy(), q, lin.bias.detach().numpy()))
    m8 = lt.QuantLinear.from_linear(lin, bits=8)
    q8 = Q.quantize(W, 8, axis=0)
    np.testing.assert_array_equal(m8.qweight.numpy(), (q8.codes().astype(np.int16) - 128))
    np.testing.assert_array_equal(m8.scales.numpy(), q8.scales)


def test_quant_linear_ragged_groups_and_old_state_dicts_load():
    """in_features not a multiple of group_size: the last group is shorter (as before); a
    state dict in the layout of the previous release loads and runs unchanged."""
    torch = pytest.importorskip("torch")
    import litecomp.torch as lt
    torch.manual_seed(2)
    lin = torch.nn.Linear(81, 10)
    m = lt.QuantLinear.from_linear(lin, bits=4, group_size=32)
    assert tuple(m.qweight.shape) == (10, 41) and tuple(m.scales.shape) == (10, 3)
    assert (m.qweight[:, -1] >> 4 == 0).all()  # the padding nibble is stored as 0
    B = block(lin.weight.detach().numpy(), 4, 32, bias=lin.bias.detach().numpy())
    x = torch.randn(4, 81)
    with torch.no_grad():
        exact(m(x).numpy(), B(x.numpy()))
    # an old-layout state dict: codes, scales and zeros chosen by hand
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 16, (10, 81)).astype(np.uint8)
    sd = {"qweight": torch.from_numpy(Q.pack_codes(codes, 4)),
          "scales": torch.from_numpy(rng.random((10, 3)).astype(np.float32)),
          "zeros": torch.from_numpy(rng.integers(0, 16, (10, 3)).astype(np.uint8)),
          "bias": torch.zeros(10)}
    m2 = lt.QuantLinear(81, 10, bits=4, group_size=32)
    m2.load_state_dict(sd)
    want = qm.BlockLinear(codes, sd["scales"].numpy(), sd["zeros"].numpy(), bits=4,
                          group_size=32, bias=np.zeros(10, np.float32))
    with torch.no_grad():
        exact(m2(x).numpy(), want(x.numpy()))
