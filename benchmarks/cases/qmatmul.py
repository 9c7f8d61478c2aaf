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


def _int8_case(N, K, M, anchor_kind):
    def setup(quick):
        n, k, m = (256, 256, min(M, 4)) if quick else (N, K, M)
        torch, lin, qlin = _torch_linear(n, k)
        if torch is None:
            w = np.random.default_rng(0).standard_normal((n, k)).astype(np.float32) * 0.02
            L = Q.prepare_linear(Q.quantize(w, 8, axis=0))
            x = np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
            return Run(litecomp=lambda: L(x), anchor=missing(f"torch {anchor_kind}", "torch"))
        L = Q.prepare_linear(Q.quantize(lin.weight.detach().numpy(), 8, axis=0),
                             bias=lin.bias.detach().numpy())
        xt = torch.randn(m, k)
        x = xt.numpy()
        f = qlin if anchor_kind == "quantize_dynamic int8" else lin

        def anchor():
            with torch.no_grad():
                return f(xt)

        def check(ours, theirs):
            # both near the float32 result (litecomp measured 0.78-0.99% relative; torch's
            # per-tensor activation quantization differs from litecomp's per row: the two
            # outputs measured 1.6-2.4% apart)
            with torch.no_grad():
                exact = lin(xt).numpy()
            theirs = theirs.numpy()
            assert np.linalg.norm(ours - exact) / np.linalg.norm(exact) < 0.012
            assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 0.03
        return Run(litecomp=lambda: L(x), anchor=(f"torch {anchor_kind}", anchor),
                   bytes=n * k + 4 * m * (k + n), check=check)
    return setup


for N, K in SHAPES:
    for M in (1, 16, 128):
        case(f"int8 linear {N}x{K} M={M}", group="qmatmul", repeats=25)(
            _int8_case(N, K, M, "quantize_dynamic int8"))
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
