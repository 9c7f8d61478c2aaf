"""One recipe, one pass, one output a runtime loads: ``compress(source, out, recipe, format=)``.

A thin runner.  Each stage of the recipe (``litecomp.recipe``) is handled by its family's
runner in ``RUNNERS`` -- one table, no per-method code here:

- ``prune`` stages change a tensor's values (``litecomp.prune.state``'s per-stage masks);
- ``quant`` stages decide how a tensor is stored, so the output format's writer runs them:
  ``litecomp`` (litecomp's compact state dict in .safetensors), ``safetensors`` (dense:
  quantized and dequantized back, fake quantization), ``compressed-tensors`` (a folder for
  transformers / vLLM; rtn and fp8 stages) and ``gguf`` (a llama.cpp model file; ``gguf``
  stages with a ``qtype``).

The input is read one tensor at a time from a memory map and the output written as it is
produced (``litecomp.io.StreamWriter``, GGUF tensor by tensor), so peak memory stays near
two of the largest tensor whatever the model's size; the one exception is a ``global``
pruning stage, which ranks all its tensors together and holds their masks.  Every check --
unknown methods and keys, targets that match nothing, a format that cannot hold a stage's
result -- runs before the first byte is written, and the output appears only when complete.
A per-tensor report (method, sparsity, bits, bytes before/after, SQNR) is returned, printed
by the command and saved as JSON beside the output.
"""

import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import dtypes as _dt
from .errors import ArgumentError
from .recipe import METHODS, stages as _stages
from .select import select

__all__ = ["compress", "FORMATS", "RUNNERS", "Row", "report_table"]

FORMATS = ("litecomp", "safetensors", "compressed-tensors", "gguf")


@dataclass
class Row:
    """One tensor of the report."""
    name: str
    methods: list = field(default_factory=list)
    sparsity: float = 0.0
    bits: float = 0.0
    bytes_before: int = 0
    bytes_after: int = 0
    sqnr_db: float = math.inf
    max_abs_err: float = 0.0
    cosine: float = 1.0
    numel: int = 0


# ------------------------------------------------------------------ family runners
class PruneRunner:
    """Value-changing stages: ``run(stage, name, array) -> array``.  ``prepare`` gets every
    stage's selected names before the pass (a ``global`` stage ranks them together)."""

    def prepare(self, stage, names, read):
        self.global_masks = getattr(self, "global_masks", {})
        if stage.options.get("granularity") == "global":
            from .prune.state import _stage_masks
            self.global_masks[stage.index] = _stage_masks(stage, {n: read(n) for n in names})

    def run(self, stage, name, a, inplace=False):
        from .prune import apply
        from .prune.state import _stage_masks
        masks = self.global_masks.get(stage.index) if hasattr(self, "global_masks") else None
        mask = masks[name] if masks is not None else _stage_masks(stage, {name: a})[name]
        ok = inplace and a.flags.writeable and a.flags.c_contiguous
        return apply(a, mask, out=a if ok else None)


class QuantRunner:
    """Storage stages: the output format's writer runs them (``check(stage, fmt)`` says
    whether that format can hold the stage's result)."""

    def check(self, stage, fmt):
        where = stage.where()
        if fmt == "gguf" and stage.method != "gguf":
            o = stage.options
            raise ArgumentError(
                f"{where}: GGUF cannot hold a {stage.method} stage "
                f"({o.get('bits', 8)}-bit, group_size {o.get('group_size')}); GGUF stores "
                "its own block types: use {'method': 'gguf', 'qtype': 'Q4_K'} (Q2_K..Q6_K, "
                "Q4_0, Q8_0, ...)")
        if fmt != "gguf" and stage.method == "gguf":
            raise ArgumentError(f"{where}: a gguf stage (qtype {stage.options.get('qtype')}) "
                                f"goes with --format gguf, not {fmt}")
        if fmt == "compressed-tensors":
            from .export.ct import scheme_of
            scheme_of(stage)
        if stage.method == "gguf":
            from .quant.gguf import FORMATS as GF
            qt = stage.options.get("qtype", "Q8_0")
            if qt not in GF:
                raise ArgumentError(f"{where}.qtype: {qt!r} is not one of {', '.join(GF)}")


RUNNERS = {"prune": PruneRunner, "quant": QuantRunner}
VALUE_FAMILIES = ("prune",)          # families whose runner changes values in the pass


def _runner_for(stage, runners):
    fam = stage.family
    if fam not in runners:
        raise ArgumentError(f"{stage.where()}: method {stage.method!r} ({fam}) has no runner "
                            f"in compress yet; it runs: {', '.join(sorted(runners))}")
    if METHODS[stage.method].calibrated and not getattr(runners[fam], "hessians", None):
        raise ArgumentError(f"{stage.where()}: method {stage.method!r} needs calibration "
                            "data: pass --hessians (or use litecomp.torch.oneshot)")
    return runners[fam]


# ------------------------------------------------------------------ the lazy, transformed view
class _View:
    """The input with the value stages applied on access, one tensor at a time; records
    each tensor's sparsity and methods in the report rows."""

    def __init__(self, ck, infos, plan, runners, rows, inplace):
        self.ck, self.infos, self.plan, self.runners, self.rows = ck, infos, plan, runners, rows
        self.inplace = inplace  # values are private copy-on-write maps: change them there
        self._last = None

    def release(self):
        """Consumers read tensors one after the other: the previous one's mapped pages
        leave this process (litecomp.io.Checkpoint.release)."""
        if self._last is not None and hasattr(self.ck, "release"):
            self.ck.release(*self._last)
        self._last = None

    def __iter__(self):
        return iter(self.infos)

    def __len__(self):
        return len(self.infos)

    def __contains__(self, name):
        return name in self.infos

    def info(self, name):
        return self.infos[name]

    def upto(self, name, last):
        self.release()
        a = self.ck[name]
        self._last = (name, a)
        for stage, names in self.plan:
            if stage.index >= last:
                break
            if stage.family in VALUE_FAMILIES and name in names:
                a = self.runners[stage.family].run(stage, name, a, self.inplace)
        return a

    def __getitem__(self, name):
        a = self.upto(name, math.inf)
        if self._last is not None and a is not self._last[1]:
            self.release()  # the stages made a copy: the mapped input is not needed again
        row = self.rows[name]
        row.methods += [s.method for s, names in self.plan
                        if s.family in VALUE_FAMILIES and name in names]
        if row.methods and a.dtype.kind in "fV":
            from .core import tensor_stats
            row.sparsity = float(tensor_stats(a).sparsity)
        return a


def _infos(ck):
    return {n: (np.dtype(ck.info(n)[0]), tuple(ck.info(n)[1])) for n in ck}


def _candidates(infos):
    return [n for n, (dt, shape) in infos.items()
            if _dt.name_of(dt) in _dt.WEIGHT_DTYPES and len(shape) >= 2]


class _Progress:
    """tensors and bytes done, on stderr (a bar when it is a terminal)."""

    def __init__(self, infos, enabled):
        self.total = sum(int(np.prod(s, dtype=np.int64)) * dt.itemsize
                         for dt, s in infos.values())
        self.count, self.n, self.done = len(infos), 0, 0
        self.enabled = enabled and sys.stderr.isatty()  # a bar only where it redraws
        self.t0 = time.perf_counter()

    def __call__(self, name, info):
        self.n += 1
        dt, shape = info
        self.done += int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
        if not self.enabled:
            return
        from ._table import format_bytes
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * frac)
        sys.stderr.write(f"\r[{bar:<30}] {self.n}/{self.count} tensors, "
                         f"{format_bytes(self.done)}/{format_bytes(self.total)} "
                         f"({time.perf_counter() - self.t0:.0f}s)")
        if self.n == self.count:
            sys.stderr.write("\n")
        sys.stderr.flush()


# ------------------------------------------------------------------ compress
def compress(source, out, recipe, *, format="litecomp", config=None, tokenizer=None,
             imatrix=None, hessians=None, max_shard_size=None, progress=False,
             report_path=None, key=None):
    """Run ``recipe`` over the checkpoint ``source`` (a path; a dict works too) and write
    ``out`` in ``format`` (one of FORMATS).  Returns the report rows (``Row``); with
    ``report_path`` (the command uses ``<out>.report.json``) they are saved as JSON.

    ``config`` / ``tokenizer``: the Hugging Face config (and tokenizer.json) for the
    compressed-tensors and GGUF formats; ``imatrix``: importance weights for GGUF K-quants;
    ``hessians``: saved Hessians (a safetensors file) for calibrated stages; ``key``: the
    nested entry of a torch checkpoint that holds the state dict.
    """
    from . import io
    if format not in FORMATS:
        raise ArgumentError(f"format: {format!r} is not one of {', '.join(FORMATS)}")
    plan_stages = _stages(recipe)
    runners = {fam: cls() for fam, cls in RUNNERS.items()}
    if hessians is not None:
        for r in runners.values():
            r.hessians = hessians
    for s in plan_stages:
        r = _runner_for(s, runners)
        if hasattr(r, "check"):
            r.check(s, format)
    if format == "gguf" and len({s.options.get("qtype", "Q8_0") for s in plan_stages
                                 if s.family == "quant"}) > 1:
        raise ArgumentError("recipe: one GGUF file takes one qtype here; give one gguf stage")
    import mmap
    # copy-on-write maps: a stage may change a tensor in place, and only the pages it
    # writes become this process's memory
    ck = io.Checkpoint(source, key=key, access=mmap.ACCESS_COPY) \
        if not hasattr(source, "items") \
        else _DictSource(source)
    try:
        infos = _infos(ck)
        cands = _candidates(infos)
        plan = [(s, set(select(cands, s.targets, s.ignore,
                               what="float tensors with 2+ dimensions")))
                for s in plan_stages]
        for s, names in plan:
            if not names:
                raise ArgumentError(f"{s.where()}: selects no tensor")
        quant = {}
        for s, names in plan:
            if s.family == "quant":
                for n in sorted(names):
                    quant.setdefault(n, s)
        rows = {n: Row(n, bytes_before=int(np.prod(shape, dtype=np.int64)) * dt.itemsize,
                       numel=int(np.prod(shape, dtype=np.int64)))
                for n, (dt, shape) in infos.items()}
        view = _View(ck, infos, plan, runners, rows, not isinstance(ck, _DictSource))
        for s, names in plan:
            if s.family in VALUE_FAMILIES and hasattr(runners[s.family], "prepare"):
                runners[s.family].prepare(s, sorted(names), lambda n, s=s: view.upto(n, s.index))
        bar = _Progress(infos, progress)
        _WRITERS[format](view, out, quant, rows, bar, config=config, tokenizer=tokenizer,
                         imatrix=imatrix, max_shard_size=max_shard_size)
        view.release()
    finally:
        ck.close()
    result = list(rows.values())
    if report_path is not None:
        from .io.atomic import atomic_write
        with atomic_write(report_path) as f:
            f.write(json.dumps({"source": str(source) if not hasattr(source, "items") else
                                None, "output": os.fspath(out), "format": format,
                                "recipe": [s.as_dict() for s in plan_stages],
                                "tensors": [_jsonable(asdict(r)) for r in result]},
                               indent=1).encode())
    return result


def _jsonable(d):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in d.items()}


class _DictSource(dict):
    def info(self, name):
        a = np.asarray(self[name])
        return a.dtype, a.shape

    def close(self):
        pass


# ------------------------------------------------------------------ writers
def _record(row, stage, original, q, nbytes):
    from .quant.state import error_report
    row.methods.append(stage.method if stage.method != "gguf" else
                       f"gguf:{stage.options.get('qtype', 'Q8_0')}")
    deq = q if isinstance(q, np.ndarray) else q.dequantize()
    e = error_report(row.name, original, deq)
    row.sqnr_db, row.max_abs_err, row.cosine = e.sqnr_db, e.max_abs_err, e.cosine
    row.bits = 8.0 * nbytes / max(1, original.size)
    row.bytes_after = int(nbytes)


def _write_state(view, out, quant, rows, bar, *, dense, max_shard_size, **_):
    from .io.stream import StreamWriter
    from .quant.state import quantize_stage
    out = os.fspath(out)
    if not out.endswith(".safetensors"):
        raise ArgumentError(f"out: {out!r}: the {'safetensors' if dense else 'litecomp'} "
                            "format writes a .safetensors file")
    with StreamWriter(out, max_shard_size=max_shard_size) as w:
        for name in view:
            a = view[name]
            stage = quant.get(name)
            if stage is None:
                w.add(name, a)
                rows[name].bytes_after = a.nbytes
            else:
                q = quantize_stage(a, stage)
                if dense:
                    d = q.dequantize(a.dtype if _dt.name_of(a.dtype) in _dt.WEIGHT_DTYPES
                                     else np.float32)
                    w.add(name, d)
                    _record(rows[name], stage, a, q, q.nbytes)
                    rows[name].bytes_after = d.nbytes
                else:
                    parts = q.to_state_dict(name)
                    for k, v in parts.items():
                        w.add(k, v)
                    _record(rows[name], stage, a, q, sum(v.nbytes for v in parts.values()))
            bar(name, view.info(name))


def _write_ct(view, out, quant, rows, bar, *, config, max_shard_size, **_):
    from .export.ct import compressed_tensors
    stages = list({id(s): s for s in quant.values()}.values())
    # each quantized weight by the first stage that selected it
    plan = [s.__class__(s.method, tuple(n for n, st in quant.items() if st is s), (),
                        dict(s.options), s.index) for s in stages]
    written = {}

    def on_tensor(name, info):
        bar(name, info)

    def record(name, stage, original, q, nbytes):
        _record(rows[name], stage, original, q, nbytes)
    compressed_tensors(view, out, config=config, recipe=plan or None,
                       max_shard_size=max_shard_size or "5GB", progress=on_tensor,
                       on_quantized=record)
    for name, row in rows.items():
        if name not in quant and not row.bytes_after:
            dt, shape = view.info(name)
            row.bytes_after = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    return written


def _write_gguf(view, out, quant, rows, bar, *, config, tokenizer, imatrix, **_):
    from .export.ggufmodel import gguf
    stage = next(iter(quant.values()), None)
    qtype = stage.options.get("qtype", "Q8_0") if stage else "F32"
    targets = set(quant)

    def record(name, original, blocks, kind):
        from .quant import gguf as qg
        bar(name, view.info(name))
        if name in targets and kind in qg.FORMATS:
            _record(rows[name], stage, original, qg.dequantize(blocks, kind)
                    .reshape(original.shape), blocks.nbytes)
        else:
            rows[name].bytes_after = blocks.nbytes
    gguf(view, out, config=config, qtype=qtype, tokenizer=tokenizer, imatrix=imatrix,
         on_tensor=record,
         quantize=targets)


_WRITERS = {
    "litecomp": lambda *a, **k: _write_state(*a, dense=False, **k),
    "safetensors": lambda *a, **k: _write_state(*a, dense=True, **k),
    "compressed-tensors": _write_ct,
    "gguf": _write_gguf,
}


def report_table(rows) -> str:
    """The report as a text table (tensors a stage touched) and a total line."""
    from ._table import format_bytes, render_table
    touched = [r for r in rows if r.methods]
    body = [[r.name, "+".join(r.methods), f"{r.sparsity:.1%}",
             f"{r.bits:.2f}" if r.bits else "-", format_bytes(r.bytes_before),
             format_bytes(r.bytes_after),
             "-" if not math.isfinite(r.sqnr_db) else f"{r.sqnr_db:.1f}"] for r in touched]
    before = sum(r.bytes_before for r in rows)
    after = sum(r.bytes_after for r in rows)
    table = render_table(["tensor", "method", "sparsity", "bits", "before", "after",
                          "SQNR dB"], body, align=["<", "<", ">", ">", ">", ">", ">"])
    return (f"{table}\n{len(touched)} of {len(rows)} tensors compressed; "
            f"{format_bytes(before)} -> {format_bytes(after)}")
