"""Calibrated compression without torch: streaming layer Hessians (``Hessian``, Hessian
files) and the stages that need them (GPTQ, SparseGPT, Wanda) applied to a state dict
(``apply_stage``).  The methods themselves are ``litecomp.quant.gptq``,
``litecomp.prune.sparsegpt``, ``litecomp.quant.awq_scales`` and
``litecomp.quant.smoothquant_scales``; on torch models ``litecomp.torch.oneshot`` runs them
layer by layer.  See docs/calibrated.md."""

from .hessian import Hessian, load_hessians, save_hessians  # noqa: F401
from .apply import LayerReport, apply_stage, apply_recipe, hessian_key  # noqa: F401

__all__ = ["Hessian", "load_hessians", "save_hessians", "apply_stage", "apply_recipe",
           "LayerReport", "hessian_key"]
