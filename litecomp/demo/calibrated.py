"""The demo's calibrated step: GPTQ beside round-to-nearest and SparseGPT beside magnitude
on one layer of the example model, calibrated on the embeddings of random tokens (the
input layer 0's self-attention sees)."""

import numpy as np

from .._table import render_table

NAME = "calibrated"


def run(ctx) -> str:
    """GPTQ vs RTN and SparseGPT vs magnitude on layer 0's q/k/v projection (calibrated)."""
    from .. import prune, quant
    from ..calib import Hessian
    sd = ctx.state_dict
    name = "transformer_decoder.layers.0.self_attn.in_proj_weight"
    w = sd[name]
    emb = sd["embed.weight"]
    tokens = np.random.default_rng(ctx.seed).integers(0, emb.shape[0], 2048)
    x = emb[tokens] + sd["positional_encoding"]  # what layer 0's self-attention reads
    h = Hessian(x.shape[1])
    h.update(x)
    group = 32 if ctx.small else 128

    def err(v):  # relative output error on the calibration tokens
        return float(np.sum((x @ (v - w).T) ** 2) / np.sum((x @ w.T) ** 2))
    rtn = err(quant.quantize(w, 4, group_size=group).dequantize())
    gq = err(quant.gptq(w, h, 4, group).dequantize())
    mag = err(np.where(prune.per_row(w, 0.5), w, 0))
    sg = err(prune.sparsegpt(w, h, 0.5)[0])
    print(f"{name} {w.shape[0]}x{w.shape[1]}, Hessian of 2048 tokens' embeddings")
    print(render_table(["method", "output error", "vs data-free"],
                       [[f"int4 g{group} round-to-nearest", f"{rtn:.3e}", ""],
                        [f"int4 g{group} GPTQ", f"{gq:.3e}", f"{gq / rtn:.2f}x"],
                        ["50% magnitude (per row)", f"{mag:.3e}", ""],
                        ["50% SparseGPT", f"{sg:.3e}", f"{sg / mag:.2f}x"]],
                       align=["<", ">", ">"]))
    return f"GPTQ {gq / rtn:.2f}x RTN's error, SparseGPT {sg / mag:.2f}x magnitude's"
