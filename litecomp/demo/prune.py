"""The demo's pruning step: the motivating story -- prune fc.weight 50%, bake it as
``prune.remove`` would, and see that the dense file does not shrink while the sparse one
is about half."""

import os
import time

import numpy as np

from .._table import format_bytes, render_table

NAME = "prune"


def run(ctx) -> str:
    """Prune fc.weight 50% (L1), bake, save the fc layer dense and sparse, compare sizes."""
    from .. import save, sparse
    from ..prune import bake, l1_unstructured, sparsity
    sd = ctx.state_dict
    w = sd["fc.weight"]
    t = time.perf_counter()
    mask = l1_unstructured(w, 0.5)
    t_mask = time.perf_counter() - t
    # what torch.nn.utils.prune leaves in the state dict; bake gives prune.remove's result
    pruned = {"fc.bias": sd["fc.bias"], "fc.weight_orig": w,
              "fc.weight_mask": mask.astype(np.float32)}
    t = time.perf_counter()
    baked = bake(pruned)
    t_bake = time.perf_counter() - t
    del pruned
    t = time.perf_counter()
    compressed = sparse.compress(baked)
    t_comp = time.perf_counter() - t
    print(f"l1_unstructured(fc.weight {w.shape[0]}x{w.shape[1]}, 0.5) {t_mask:.3f} s, "
          f"bake {t_bake:.3f} s, sparse.compress {t_comp:.3f} s; fc.weight sparsity "
          f"{sparsity(baked['fc.weight']).total:.1%}")
    rows, sizes = [], {}
    for name, what, data in (
            ("fc_original.safetensors", "dense, before pruning",
             {"fc.weight": w, "fc.bias": sd["fc.bias"]}),
            ("fc_pruned_dense.safetensors", "dense, pruned + baked", baked),
            ("fc_pruned_sparse.safetensors", "sparse-bitmask", compressed)):
        path = ctx.path(name)
        t = time.perf_counter()
        save(data, path)
        sizes[name] = os.path.getsize(path)
        rows.append([name, what, format_bytes(sizes[name]),
                     f"{sizes[name] / sizes['fc_original.safetensors']:.0%}",
                     f"{time.perf_counter() - t:.2f} s"])
    print(render_table(["file (fc layer)", "content", "size", "vs original", "save"], rows,
                       align=["<", "<", ">", ">", ">"]))
    dense, small = sizes["fc_pruned_dense.safetensors"], sizes["fc_pruned_sparse.safetensors"]
    ratio = small / sizes["fc_original.safetensors"]
    return (f"fc.weight 50% pruned: dense file {format_bytes(dense)} (no smaller), "
            f"sparse {format_bytes(small)} ({ratio:.0%})")
