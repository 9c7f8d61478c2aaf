"""The demo's pruning step: the motivating story -- prune fc.weight 50%, bake it as
``prune.remove`` would, and see that the dense file does not shrink while the sparse one
does."""

import os
import time

import numpy as np

from .._table import format_bytes, render_table


def step_prune(ctx) -> str:
    """Prune fc.weight 50% (L1), bake, save dense and sparse, compare sizes."""
    from .. import save, sparse
    from . import bake, l1_unstructured, sparsity
    sd = ctx.state_dict
    w = sd["fc.weight"]
    t = time.perf_counter()
    mask = l1_unstructured(w, 0.5)
    t_mask = time.perf_counter() - t
    # what torch.nn.utils.prune leaves in a state dict, then prune.remove's result
    pruned = {}
    for k, v in sd.items():
        if k == "fc.weight":
            pruned["fc.weight_orig"] = v
            pruned["fc.weight_mask"] = mask.astype(np.float32)
        else:
            pruned[k] = v
    t = time.perf_counter()
    baked = bake(pruned)
    t_bake = time.perf_counter() - t
    del pruned
    print(f"l1_unstructured(fc.weight {w.shape[0]}x{w.shape[1]}, 0.5): {t_mask:.3f} s; "
          f"bake: {t_bake:.3f} s; fc.weight sparsity {sparsity(baked['fc.weight']).total:.1%}")
    rows = []
    sizes = {}
    dense_before = ctx.data.get("safetensors")
    if dense_before and os.path.exists(dense_before):
        sizes["original"] = os.path.getsize(dense_before)
        rows.append([os.path.basename(dense_before), "dense, before pruning",
                     format_bytes(sizes["original"]), format_bytes(w.nbytes), "-"])
    t = time.perf_counter()
    compressed = sparse.compress(baked)
    t_comp = time.perf_counter() - t
    fc_sparse = sum(compressed[f"fc.weight.{s}"].nbytes for s in sparse.BITMASK_KEYS)
    for name, what, data, fc_bytes in (
            ("pruned_dense.safetensors", "dense, pruned + baked", baked, w.nbytes),
            ("pruned_sparse.safetensors", "sparse-bitmask", compressed, fc_sparse)):
        path = ctx.path(name)
        t = time.perf_counter()
        save(data, path)
        sizes[name] = os.path.getsize(path)
        rows.append([name, what, format_bytes(sizes[name]), format_bytes(fc_bytes),
                     f"{time.perf_counter() - t:.2f} s"])
    print(render_table(["file", "content", "file size", "fc.weight bytes", "save"], rows,
                       align=["<", "<", ">", ">", ">"]))
    ratio = fc_sparse / w.nbytes
    print(f"sparse.compress: {t_comp:.3f} s; fc.weight stored in {ratio:.0%} of its dense "
          f"size (half the values + 1 bit per weight)")
    return (f"fc.weight 50% pruned: dense file {format_bytes(sizes['pruned_dense.safetensors'])} "
            f"(no smaller), sparse {format_bytes(sizes['pruned_sparse.safetensors'])} "
            f"(fc.weight at {ratio:.0%})")
