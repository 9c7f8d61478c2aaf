"""The demo's save/reload step: the model written as torch .pth and .safetensors, read
back (memory-mapped), and checked bit for bit; its config (the head count no tensor shows)
beside them as model.config.json, which ``litecomp shrink`` reads."""

import os
import time

import numpy as np

from .._table import format_bytes, render_table

NAME = "save/reload"


def identical(a, b) -> bool:
    """Same dtype, shape and bits (NaN payloads and -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    raw = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(a.dtype.itemsize,
                                                                      np.uint8)
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return np.array_equal(a.reshape(-1).view(raw), b.reshape(-1).view(raw))


def run(ctx) -> str:
    """Save the model as .pth (torch format) and .safetensors, reload, verify."""
    from ..arch import config_of, config_path, save_config
    from ..io import load, save
    sd = ctx.state_dict
    rows, parts = [], []
    for fmt, name in (("torch", "model.pth"), ("safetensors", "model.safetensors")):
        path = ctx.path(name)
        t = time.perf_counter()
        save(sd, path)
        t_save = time.perf_counter() - t
        t = time.perf_counter()
        back = load(path)
        t_load = time.perf_counter() - t
        ok = list(back) == list(sd) and all(identical(back[k], sd[k]) for k in sd)
        del back
        if not ok:
            raise AssertionError(f"{path}: reloaded tensors differ from the saved ones")
        size = os.path.getsize(path)
        rows.append([name, fmt, format_bytes(size), f"{t_save:.2f} s", f"{t_load:.3f} s",
                     "bit-identical"])
        parts.append(f"{name} {format_bytes(size)}")
        ctx.data["pth" if fmt == "torch" else fmt] = path
    print(render_table(["file", "format", "size", "save", "load (mmap)", "check"], rows,
                       align=["<", "<", ">", ">", ">", "<"]))
    cfg = config_of(sd)
    if cfg is not None:  # the sizes no tensor shows (the head count), for litecomp shrink
        print(f"config (the sizes, heads included): {save_config(cfg, config_path(path))}")
    return ", ".join(parts) + "; reloaded bit-identical"
