"""Quantized matmul: int8 dynamic Linear vs torch quantize_dynamic and torch float32;
4-bit weight-only GEMV against the memory roofline (weights cycled through more memory than
the L3 cache holds, as in a real model where every layer's weights come from DRAM)."""

import numpy as np

import litecomp.quant as Q
from litecomp.quant import gguf as lg

from ..harness import Run, case, missing, optional_import

SHAPES = [(4096, 4096), (11008, 4096)]


def _torch_linear(N, K):
    torch = optional_import("torch")
    if torch is None:
        return None, None, None
    torch.manual_seed(0)
    lin = torch.nn.Linear(K, N)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qlin = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin),
                                                      {torch.nn.Linear}, dtype=torch.qint8)
    return torch, lin, qlin


def _int8_case(N, K, M, anchor_kind, *, cold=False, static=False):
    """litecomp's int8 Linear (dynamic, or ``static``: calibrated input scale and zero point)
    beside torch.  ``cold``: both sides cycle through enough copies of the layer (> 260 MiB,
    more than the L3 cache) that every call reads its weights from DRAM."""
    def setup(quick):
        n, k, m = (256, 256, min(M, 4)) if quick else (N, K, M)
        torch, lin, qlin = _torch_linear(n, k)
        rng = np.random.default_rng(1)
        if torch is None:
            w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.02
            L = Q.prepare_linear(Q.quantize(w, 8, axis=0))
            x = rng.standard_normal((m, k)).astype(np.float32)
            return Run(litecomp=lambda: L(x), anchor=missing(f"torch {anchor_kind}", "torch"))
        xt = torch.randn(m, k)
        x = xt.numpy()
        qp = Q.MinMaxObserver().update(x).qparams(bits=8) if static else None
        L = Q.prepare_linear(Q.quantize(lin.weight.detach().numpy(), 8, axis=0),
                             bias=lin.bias.detach().numpy(), input_qparams=qp)
        f = qlin if anchor_kind == "quantize_dynamic int8" else lin
        copies = max(1, (400 << 20) // (n * k)) if cold and not quick else 1
        ours = [L] + [_copy_int8(L) for _ in range(copies - 1)]
        theirs = [f] + [_torch_copy(torch, lin) for _ in range(copies - 1)]
        st = {"a": 0, "b": 0}

        def run():
            st["a"] = (st["a"] + 1) % copies
            return ours[st["a"]](x)

        def anchor():
            st["b"] = (st["b"] + 1) % copies
            with torch.no_grad():
                return theirs[st["b"]](xt)

        def check(ours, theirs):
            # both near the float32 result (litecomp measured 0.78-0.99% relative; torch's
            # per-tensor activation quantization differs from litecomp's per row: the two
            # outputs measured 1.6-2.4% apart)
            with torch.no_grad():
                exact = lin(xt).numpy()
            theirs = theirs.numpy()
            # static: one per-tensor input range instead of one per row (a looser bound)
            bound = 0.03 if static else 0.012
            assert np.linalg.norm(ours - exact) / np.linalg.norm(exact) < bound
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 0.03
        name = f"torch {anchor_kind}" + (" (cold)" if cold else "")
        return Run(litecomp=run, anchor=(name, anchor), bytes=n * k + 4 * m * (k + n),
                   check=check, notes=f"{copies} copies cycled" if copies > 1 else "")
    return setup


def _copy_int8(layer):
    import copy
    c = copy.copy(layer)
    c._packed = layer._packed.copy()
    return c


def _torch_copy(torch, lin):
    import warnings
    new = torch.nn.Linear(lin.in_features, lin.out_features)
    new.load_state_dict(lin.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(new),
                                                      {torch.nn.Linear}, dtype=torch.qint8)


for N, K in SHAPES:
    for M in (1, 4, 16, 128):
        case(f"int8 linear {N}x{K} M={M}", group="qmatmul", repeats=25)(
            _int8_case(N, K, M, "quantize_dynamic int8"))
    case(f"int8 linear {N}x{K} M=1 cold", group="qmatmul", repeats=25)(
        _int8_case(N, K, 1, "quantize_dynamic int8", cold=True))
    for M in (1, 128):
        case(f"int8 linear static {N}x{K} M={M}", group="qmatmul", repeats=25)(
            _int8_case(N, K, M, "quantize_dynamic int8", static=True))
    for M in (1, 128):
        case(f"int8 linear {N}x{K} M={M} (vs fp32)", group="qmatmul", repeats=25)(
            _int8_case(N, K, M, "float32 F.linear"))


# output error of x @ W.T from the 4-bit weight alone, measured on these N(0, 0.02) weights:
# int4 g128 10.8-11.0%, Q4_0 8.4-8.9%, NF4 9.4%
BOUND = {"int4 g128": 0.12, "gguf Q4_0": 0.1, "nf4": 0.105}


def _gemv_case(kind, cold):
    def setup(quick):
        n, k = (256, 1024) if quick else (4096, 11008)
        rng = np.random.default_rng(0)
        w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
        if kind == "int4 g128":
            layer = Q.prepare_linear(Q.quantize(w, 4, group_size=128))
        elif kind == "gguf Q4_0":
            # Q4_0 blocks from litecomp's quantizer (byte-identical to gguf.quants': the
            # tests), so the case times this format whether or not gguf is installed
            layer = Q.prepare_linear(lg.quantize(w, "Q4_0"), qtype="Q4_0", shape=w.shape)
        else:
            layer = Q.prepare_linear(Q.quantize_4bit(w, "nf4"))
        copies = 1
        if cold and not quick:  # > 260 MiB L3: every call reads its weights from DRAM
            copies = max(1, (400 << 20) // layer.nbytes)
        layers = [layer] + [_copy(layer) for _ in range(copies - 1)]
        x = rng.standard_normal((1, k)).astype(np.float32)
        state = {"i": 0}

        def run():
            state["i"] = (state["i"] + 1) % len(layers)
            return layers[state["i"]](x)
        torch = optional_import("torch")
        if torch is None:
            anchor = missing("torch float32 F.linear", "torch")
        else:
            wt = [torch.from_numpy(w.copy()) for _ in range(3 if cold and not quick else 1)]
            xt = torch.from_numpy(x)
            st = {"i": 0}

            def fl():
                st["i"] = (st["i"] + 1) % len(wt)
                return torch.nn.functional.linear(xt, wt[st["i"]])
            anchor = ("torch float32 F.linear" + (" (cold)" if cold else ""), fl)
        def check(ours, theirs):  # the 4-bit weight's error (measured relative, see BOUND)
            theirs = theirs.numpy()
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < BOUND[kind]
        return Run(litecomp=run, anchor=anchor, bytes=layer.nbytes, check=check,
                   notes=f"{kind}: {layer.nbytes / 2**20:.1f} MiB packed weights"
                         + (f", {copies} copies cycled" if copies > 1 else ""))
    return setup


def _copy(layer):
    import copy
    c = copy.copy(layer)
    for attr in ("_packed", "_s", "_z", "_m", "_absmax"):
        v = getattr(layer, attr, None)
        if isinstance(v, np.ndarray):
            setattr(c, attr, v.copy())
    return c


for kind in ("int4 g128", "gguf Q4_0", "nf4"):
    case(f"4-bit GEMV {kind} 4096x11008 M=1 cold", group="qmatmul", repeats=25)(
        _gemv_case(kind, True))
case("4-bit GEMV int4 g128 4096x11008 M=1 hot (L3)", group="qmatmul")(
    _gemv_case("int4 g128", False))


def _torch_int4(torch, w, gs):
    """torch's CPU int4 weight (the layout torchao uses): codes q in [0, 15] per group of
    ``gs`` with w = (q - 8) * scale; scales_and_zeros [K / gs, N, 2] bfloat16."""
    n, k = w.shape
    g = w.view(n, k // gs, gs)
    s = (g.abs().amax(-1) / 7.5).clamp_min(1e-12)
    q = torch.clamp(torch.round(g / s[..., None]) + 8, 0, 15).to(torch.int32).view(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2)
    sz = torch.stack([s.t(), torch.zeros_like(s.t())], -1).to(torch.bfloat16).contiguous()
    return packed, sz


def _weight_only(N, K, M, quick, bits, anchor):
    """(torch or None, float weight, x, litecomp layer, Run-if-torch-is-missing)."""
    n, k, m = (256, 512, min(M, 4)) if quick else (N, K, M)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.02
    x = rng.standard_normal((m, k)).astype(np.float32)
    L = Q.prepare_linear(Q.quantize(w, bits, **({"group_size": 128} if bits == 4 else
                                                   {"axis": 0})))
    torch = optional_import("torch")
    none = None if torch else Run(litecomp=lambda: L(x), anchor=missing(anchor, "torch"))
    return torch, w, x, L, none


def _near_float(x, w, bound):
    """A check for weight-only cases whose anchor quantizes its own way: both outputs near
    the float x @ w.T (relative Frobenius error under ``bound``)."""
    exact = x @ w.T

    def check(ours, theirs):
        theirs = np.asarray(theirs.float().numpy())
        for name, y in (("litecomp", ours), ("anchor", theirs)):
            err = float(np.linalg.norm(y - exact) / np.linalg.norm(exact))
            assert err < bound, (name, err)
    return check


def _int4_case(N, K, M):
    def setup(quick):
        torch, w, x, L, none = _weight_only(N, K, M, quick, 4, "torch _weight_int4pack_mm_for_cpu")
        if none:
            return none
        (n, k), m = w.shape, x.shape[0]
        packed, sz = _torch_int4(torch, torch.from_numpy(w), 128)
        xb = torch.from_numpy(x).to(torch.bfloat16)
        return Run(litecomp=lambda: L(x),
                   anchor=("torch _weight_int4pack_mm_for_cpu (bf16 x)",
                           lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, 128, sz)),
                   bytes=L.nbytes + 4 * m * (k + n),
                   # 4-bit g128 of Gaussian weights: about 10% relative either way
                   check=_near_float(x, w, 0.2))
    return setup


def _int8pack_case(N, K, M):
    def setup(quick):
        torch, w, x, L, none = _weight_only(N, K, M, quick, 8, "torch _weight_int8pack_mm")
        if none:
            return none
        (n, k), m = w.shape, x.shape[0]
        w8 = torch.from_numpy(L.qweight.copy())
        s8 = torch.from_numpy(L.scales.copy()).to(torch.bfloat16)
        xb = torch.from_numpy(x).to(torch.bfloat16)
        return Run(litecomp=lambda: L(x),
                   anchor=("torch _weight_int8pack_mm (bf16 x)",
                           lambda: torch.ops.aten._weight_int8pack_mm(xb, w8, s8)),
                   bytes=n * k + 4 * m * (k + n),
                   # int8 per channel (+ bf16 x on torch's side): well under 3%
                   check=_near_float(x, w, 0.03))
    return setup


for N, K in SHAPES:
    for M in (1, 4, 16, 128):
        case(f"int4 g128 linear {N}x{K} M={M}", group="qmatmul", repeats=25)(_int4_case(N, K, M))
    for M in (1, 128):
        case(f"int8 linear {N}x{K} M={M} (vs int8 weight-only)", group="qmatmul",
             repeats=25)(_int8pack_case(N, K, M))
