"""``compress(model, out, recipe, batches, format=)``: a torch model through
``litecomp.torch.oneshot`` (every stage it runs: awq, smoothquant, gptq, sparsegpt, wanda
and the data-free ones), then written by ``litecomp.compress`` in any of its formats."""

from ..errors import ArgumentError
from ..recipe import stages

__all__ = ["compress"]


def compress(model, out, recipe, batches, *, format="litecomp", sequential_targets=None,
             progress=None, **options):
    """Calibrate and compress ``model`` with ``recipe`` on ``batches`` (``oneshot``; the
    model's weights are updated in place) and write it to ``out`` in ``format`` (see
    ``litecomp.compress.compress``, whose ``config``, ``tokenizer``, ``imatrix``,
    ``max_shard_size``, ``report_path`` go in ``options``).  ``gguf`` stages run after
    calibration, on the calibrated float weights; quantized weights are stored with the codes
    oneshot chose.  Shrink stages change the model's shapes: shrink first
    (``litecomp.torch.apply_shrink``).  Every check of the format runs before calibration.
    Returns the report rows."""
    from .. import compress as _c
    from ..quant import load_quantized
    from . import to_numpy
    from .oneshot import oneshot
    plan = stages(recipe)
    for s in plan:
        if s.family == "shrink":
            raise ArgumentError(f"{s.where()}: {s.method} changes the model's shapes; shrink "
                                "first (litecomp.torch.apply_shrink), then compress")
    ours = [s for s in plan if s.method != "gguf"]
    done = {s.index for s in ours}
    _c.check_recipe(plan, format, done=done)
    res = oneshot(model, [s.as_dict() for s in ours], batches,
                  sequential_targets=sequential_targets, progress=progress)
    sd = {k: to_numpy(v.detach()) for k, v in model.state_dict().items()}
    given = {k[:-len(".qdata")]: load_quantized(res.state_dict, k[:-len(".qdata")])
             for k in res.state_dict if k.endswith(".qdata")}
    reports = {}
    for r in res.report:
        reports.setdefault(r.name, []).append(r)
    return _c.compress(sd, out, plan, format=format, _given=(given, done, reports),
                       **options)
