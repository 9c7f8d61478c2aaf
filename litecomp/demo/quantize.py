"""The demo's quantize step: int8 per channel and int4 groups of 128 of every weight
matrix, saved as compact .safetensors files, with per-layer SQNR."""

import os
import re

from .._table import format_bytes, render_table

NAME = "quantize"


def _layer_of(name):
    m = re.match(r"(.*layers\.\d+)\.", name)
    return m.group(1).replace("transformer_decoder.", "") if m else name


def run(ctx) -> str:
    """Quantize the weights: int8 per channel and int4 groups of 128; size and SQNR."""
    from ..io import save
    from ..quant import quantize_state_dict
    sd = ctx.state_dict
    group = 32 if ctx.small else 128  # the tiny model's rows are only 64 wide
    recipes = {"int8": {"*": {"bits": 8, "axis": 0}},
               "int4": {"*": {"bits": 4, "group_size": group}}}
    worst, sizes = {}, {}
    for label, recipe in recipes.items():
        out, report = quantize_state_dict(sd, recipe)
        path = ctx.path(f"model-{label}.safetensors")
        save(out, path)
        sizes[label] = os.path.getsize(path)
        ctx.data[f"quant_{label}"] = path
        for e in report:  # the worst tensor of each layer
            key = _layer_of(e.name)
            w = worst.setdefault(key, {})
            w[label] = min(w.get(label, float("inf")), e.sqnr_db)
        del out
    rows = [[layer, f"{v['int8']:.1f}", f"{v['int4']:.1f}"] for layer, v in worst.items()]
    print(render_table(["layer (worst tensor)", "int8/ch SQNR dB", f"int4/g{group} SQNR dB"], rows,
                       align=["<", ">", ">"]))
    base = sum(a.nbytes for a in sd.values())
    print(f"float32 {format_bytes(base)} -> int8 {format_bytes(sizes['int8'])}, "
          f"int4 {format_bytes(sizes['int4'])} (.safetensors on disk)")
    lo8 = min(v["int8"] for v in worst.values())
    lo4 = min(v["int4"] for v in worst.values())
    return (f"int8 {format_bytes(sizes['int8'])} (SQNR >= {lo8:.1f} dB), "
            f"int4 {format_bytes(sizes['int4'])} (>= {lo4:.1f} dB)")
