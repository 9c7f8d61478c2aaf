"""The demo's calibrated step: GPTQ beside round-to-nearest and SparseGPT beside magnitude
on one weight of the example model -- layer 0's query projection (the first d_model rows of
its self-attention in_proj_weight), calibrated on 2048 random tokens' inputs to that layer
(embedding + positional encoding).  The error shown is the layer-wise reconstruction error
on those calibration tokens, ||X (W' - W)^T||^2 / ||X W^T||^2, which is what GPTQ and
SparseGPT minimise (and what their papers and llm-compressor report per layer).  The example
model is random-initialised, so its inputs have none of a trained model's outlier channels:
on held-out tokens the calibrated methods only match the data-free ones here.  About a
second: one 512x512 weight, 2048 tokens."""

import numpy as np

from .._table import render_table

NAME = "calibrated"
TOKENS = 2048


def run(ctx) -> str:
    """GPTQ vs RTN and SparseGPT vs magnitude on layer 0's query projection (calibrated)."""
    from .. import prune, quant
    from ..calib import Hessian
    from ..calib.obs import output_error
    sd = ctx.state_dict
    name = "transformer_decoder.layers.0.self_attn.in_proj_weight"
    emb = sd["embed.weight"]
    d = emb.shape[1]
    w = np.ascontiguousarray(sd[name][:d])  # the query rows
    tokens = np.random.default_rng(ctx.seed).integers(0, emb.shape[0], TOKENS)
    h = Hessian(d)
    h.update(emb[tokens] + sd["positional_encoding"])  # what layer 0's self-attention reads
    H = h.matrix
    group = 32 if ctx.small else 128

    def err(v):  # layer-wise reconstruction error on the calibration tokens, from H
        return output_error(w, v, H)
    rtn = err(quant.quantize(w, 4, group_size=group).dequantize())
    gq = err(quant.gptq(w, h, 4, group).dequantize())
    mag = err(np.where(prune.per_row(w, 0.5), w, 0))
    sg = err(prune.sparsegpt(w, h, 0.5)[0])
    print(f"{name}[:{d}] (layer 0's query projection, {d}x{d}), calibrated on {TOKENS} "
          "random tokens' inputs to layer 0; reconstruction error on those tokens")
    print(render_table(["method", "output error", "vs data-free"],
                       [[f"int4 g{group} round-to-nearest", f"{rtn:.3e}", ""],
                        [f"int4 g{group} GPTQ", f"{gq:.3e}", f"{gq / rtn:.2f}x"],
                        ["50% magnitude (per row)", f"{mag:.3e}", ""],
                        ["50% SparseGPT", f"{sg:.3e}", f"{sg / mag:.2f}x"]],
                       align=["<", ">", ">"]))
    return (f"layer 0 query proj., {TOKENS} calibration tokens: GPTQ {gq / rtn:.2f}x RTN's "
            f"reconstruction error, SparseGPT {sg / mag:.2f}x magnitude's")
