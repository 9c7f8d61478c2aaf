"""The demo's distillation step: the fused KL loss and its gradient on the example model's
logits, beside the same computation in plain NumPy."""

import time

import numpy as np

from .._table import render_table

NAME = "distill"


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def run(ctx) -> str:
    """Distillation: fused KL (T=2) loss + gradient on logits of the model's fc head."""
    from .. import random as _random
    from ..distill import kl_div

    w, b = ctx.state_dict["fc.weight"], ctx.state_dict["fc.bias"]
    rows = 32 if ctx.small else 256
    h = _random.normal((rows, w.shape[1]), seed=ctx.seed + 11)
    teacher = h @ w.T + b                                   # [rows, vocab] teacher logits
    student = 0.8 * teacher + _random.normal(teacher.shape, 0.0, float(teacher.std()),
                                             seed=ctx.seed + 12)
    T = 2.0
    t0 = time.perf_counter()
    value, g = kl_div(student, teacher, temperature=T)
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()                                # the same in plain NumPy float32
    lq, lp = _np_log_softmax(student / T), _np_log_softmax(teacher / T)
    p = np.exp(lp)
    np_value = float(np.sum(p * (lp - lq), dtype=np.float64)) * T * T / rows
    np_grad = (np.exp(lq) - p) * (T / rows)
    theirs = time.perf_counter() - t0
    err = float(np.abs(g - np_grad).max())
    gbps = (student.nbytes + teacher.nbytes + g.nbytes) / ours / 1e9
    print(render_table(
        ["", "rows x vocab", "time", "loss", "max |grad diff|"],
        [["litecomp kl_div (C)", f"{rows} x {teacher.shape[1]:,}", f"{ours * 1e3:.1f} ms",
          f"{value:.6f}", f"{err:.1e}"],
         ["NumPy (log_softmax, exp, sum)", "", f"{theirs * 1e3:.1f} ms", f"{np_value:.6f}", ""]],
        align=["<", ">", ">", ">", ">"]))
    print(f"throughput {rows / ours:,.0f} rows/s, {gbps:.1f} GB/s (inputs + gradient); "
          f"{theirs / ours:.1f}x NumPy")
    fused = _fused_piece(ctx, w, b, h)
    return (f"KL T=2 loss+grad on {rows}x{teacher.shape[1]:,} logits in {ours * 1e3:.0f} ms "
            f"({theirs / ours:.0f}x NumPy, loss {value:.4f}); {fused}")


def _fused_piece(ctx, w, b, h):
    """The same loss from hidden states and the head (distill.fused_linear): no logits."""
    import tracemalloc
    from .. import random as _random
    from ..distill import default_chunk, fused_linear, kl_div

    rows = 16 if ctx.small else 64
    h = h[:rows]
    hs = 0.8 * h + _random.normal(h.shape, 0.0, 0.5, seed=ctx.seed + 13)  # student states
    tracemalloc.start()
    t0 = time.perf_counter()
    res = fused_linear(hs, w, (h, w, b), kind="kl", temperature=2.0, student_bias=b)
    took = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    value, g = kl_div(hs @ w.T + b, h @ w.T + b, temperature=2.0)       # materialised
    err = float(np.abs(res.grad_weight - g.T @ hs).max() / np.abs(g.T @ hs).max())
    v, d = w.shape
    chunk = min(rows, default_chunk(v))
    print(f"fused lm_head + KL from {rows} x {d} hidden states, no logits: "
          f"{took * 1e3:.0f} ms, loss {res.loss:.6f} (on materialised logits {value:.6f}), "
          f"grad W rel. diff {err:.1e}")
    print(f"peak {peak / 2**20:.0f} MiB: the {res.grad_weight.nbytes / 2**20:.0f} MiB weight "
          f"gradient + 2 chunk buffers of {chunk} x {v:,}; at 4,096 rows the logits alone "
          f"would be {4096 * v * 4 / 2**30:.1f} GiB per model")
    return f"fused lm_head+KL {rows} rows in {took * 1e3:.0f} ms"
