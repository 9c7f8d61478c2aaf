"""The demo's export step: one recipe, one streaming pass, a GGUF model file llama.cpp
loads (``litecomp compress --format gguf``) from the vocabulary-shrunk model."""

import os
import time

from .._table import format_bytes

NAME = "export"


def run(ctx) -> str:
    """litecomp compress: the shrunk model -> a Q4_K GGUF file, streamed tensor by tensor."""
    from ..export import ggufmodel
    if not ggufmodel.available():
        print("skipped: GGUF files are written through the gguf package (pip install gguf)")
        return "skipped (pip install gguf)"
    from .. import save
    from ..compress import compress, report_table
    src = ctx.path("model_vocab_shrunk.safetensors")
    if not os.path.exists(src):  # the shrink step did not run
        src = save(ctx.state_dict, ctx.path("model_for_export.safetensors"))
        cfg = getattr(ctx.state_dict, "config", None)
        if cfg:  # the head count is not in the tensors: compress reads it from here
            from ..arch import config_path, save_config
            save_config(cfg, config_path(src))
    out = ctx.path("model-Q4_K.gguf")
    recipe = [{"method": "magnitude", "sparsity": 0.3, "targets": ["re:.*linear.*"]},
              {"method": "gguf", "qtype": "Q4_K"}]
    print(f"recipe: {recipe}")
    t = time.perf_counter()
    rows = compress(src, out, recipe, format="gguf", report_path=out + ".report.json")
    dt = time.perf_counter() - t
    print(report_table(rows).splitlines()[-1] + f" ({dt:.2f} s)")
    print(f"{out}: a llama.cpp-style model file (architecture 'litecomp'), report beside it")
    return (f"GGUF Q4_K: {format_bytes(os.path.getsize(src))} -> "
            f"{format_bytes(os.path.getsize(out))} in {dt:.1f} s")
