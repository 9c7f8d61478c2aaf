"""``litecomp demo``: the motivating workflow, step by step, on the built-in example model.

Each step is a module of this package with ``NAME`` (what ``--steps`` calls it) and
``run(ctx) -> str``, which prints what it did and returns a one-line result for the summary
table; the first line of ``run``'s docstring is the step's heading.  ``STEPS`` lists the
modules in the order they run, so a capability adds its step by writing one module here and
adding one line to ``STEPS``.  Steps share ``ctx``: the state dict, the output folder, and
whatever earlier steps left in ``ctx.data``.
"""

import importlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from .. import examples
from .._table import render_table
from ..errors import ArgumentError

STEPS = [
    "model",
    "save_reload",
    "prune",
    "quantize",
    "calibrated",
    "shrink",
    "export",
    "distill",
]


@dataclass
class DemoContext:
    state_dict: dict
    out_dir: str
    small: bool
    seed: int
    data: dict = field(default_factory=dict)

    def path(self, name: str) -> str:
        return os.path.join(self.out_dir, name)


def step_modules():
    """The step modules, in the order they run."""
    return [importlib.import_module(f"{__name__}.{name}") for name in STEPS]


def run_demo(*, small=False, out=None, seed=0, steps=None) -> int:
    modules = step_modules()
    known = [m.NAME for m in modules]
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
        for step in modules:
            if steps is not None and step.NAME not in steps:
                continue
            print(f"== {step.NAME}: {(step.run.__doc__ or '').strip().splitlines()[0]}")
            t = time.perf_counter()
            result = step.run(ctx)
            dt = time.perf_counter() - t
            summary.append([step.NAME, f"{dt:.2f} s", result])
            print()
        total = time.perf_counter() - t0
        print("== summary")
        print(render_table(["step", "time", "result"], summary, align=["<", ">", "<"]))
        print(f"\ntotal {total:.1f} s" + ("" if tmp else f"; files in {out}"))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0
