"""``litecomp demo``: the motivating workflow, step by step, on the built-in example model.

Each step is a function ``step(ctx) -> str`` that prints what it did and returns a one-line
result for the summary table; ``STEPS`` lists them in order.  A capability adds its step by
writing the function (next to its own code) and adding one entry to ``STEPS``.  Steps share
``ctx``: the state dict, the output folder, and whatever earlier steps left in ``ctx.data``.
"""

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from . import examples
from ._table import format_bytes, format_count, render_table
from .errors import ArgumentError
from .distill import demo_step as step_distill


@dataclass
class DemoContext:
    state_dict: dict
    out_dir: str
    small: bool
    seed: int
    data: dict = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)


def parameter_table(state_dict) -> str:
    """The ``model.named_parameters()`` view: name, shape, dtype, numel, bytes, and totals."""
    rows, numel, nbytes = [], 0, 0
    for name, a in state_dict.items():
        rows.append([name, "x".join(map(str, a.shape)) or "scalar", a.dtype.name,
                     format_count(a.size), format_bytes(a.nbytes)])
        numel += a.size
        nbytes += a.nbytes
    rows.append(["total", f"{len(state_dict)} tensors", "", format_count(numel),
                 format_bytes(nbytes)])
    return render_table(["name", "shape", "dtype", "numel", "bytes"], rows,
                        align=["<", "<", "<", ">", ">"])


def step_model(ctx: DemoContext) -> str:
    """Build the example model and print its parameters."""
    sd = ctx.state_dict
    print(parameter_table(sd))
    numel = sum(a.size for a in sd.values())
    nbytes = sum(a.nbytes for a in sd.values())
    return f"{format_count(numel)} parameters, {format_bytes(nbytes)} float32"


# (name, function).  Later capabilities append theirs: save/reload, prune+bake, quantize,
# distill.
from .io.demo import step_save_reload  # noqa: E402
from .prune.demo import step_prune  # noqa: E402
from .quant.demo import step_quantize  # noqa: E402
from .calib.demo import step_calibrated  # noqa: E402

STEPS = [
    ("model", step_model),
    ("save/reload", step_save_reload),
    ("prune", step_prune),
    ("quantize", step_quantize),
    ("calibrated", step_calibrated),
    ("distill", step_distill),
]


def run_demo(*, small=False, out=None, seed=0, steps=None) -> int:
    known = [n for n, _ in STEPS]
    if steps is not None:
        unknown = [s for s in steps if s not in known]
        if unknown:
            raise ArgumentError(f"steps: unknown step(s) {', '.join(unknown)}; "
                                f"known: {', '.join(known)}")
    t0 = time.perf_counter()
    if small:
        sd = examples.tiny_decoder_lm(seed=seed)
        what = "tiny example model (litecomp.examples.tiny_decoder_lm)"
    else:
        sd = examples.decoder_lm(seed=seed)
        what = ("example model litecomp.examples.decoder_lm(): Embedding(98631, 512) -> "
                "6-layer TransformerDecoder -> Linear(512, 98631)")
    build_time = time.perf_counter() - t0
    tmp = None
    if out is None:
        tmp = out = tempfile.mkdtemp(prefix="litecomp-demo-")
    os.makedirs(out, exist_ok=True)
    ctx = DemoContext(state_dict=sd, out_dir=out, small=small, seed=seed)
    summary = []
    try:
        print(f"litecomp demo: {what}, built in {build_time:.2f} s\n")
        for name, fn in STEPS:
            if steps is not None and name not in steps:
                continue
            print(f"== {name}: {(fn.__doc__ or '').strip().splitlines()[0]}")
            t = time.perf_counter()
            result = fn(ctx)
            dt = time.perf_counter() - t
            summary.append([name, f"{dt:.2f} s", result])
            print()
        total = time.perf_counter() - t0
        print("== summary")
        print(render_table(["step", "time", "result"], summary, align=["<", ">", "<"]))
        print(f"\ntotal {total:.1f} s" + ("" if tmp else f"; files in {out}"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
