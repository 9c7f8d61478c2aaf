"""PyTorch interop (optional).  Importing this module imports torch; nothing else in
litecomp does.

- ``DecoderLM``: the torch twin of ``litecomp.examples.decoder_lm`` (same names and shapes).
- ``to_numpy`` / ``from_numpy``: zero-copy conversion of CPU tensors, bfloat16 included;
  ``numpy_state_dict(module)`` (with the module's config) / ``load_numpy_state_dict``.
- distillation: ``DistillationLoss`` (logits), ``FusedLinearDistillationLoss`` (hidden
  states + lm_head, no logits), ``FeatureDistillation`` (chosen layers), ``distill_step``.
"""

try:
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - exercised only without torch
    raise ImportError("litecomp.torch needs PyTorch: pip install torch") from exc

import ml_dtypes
import numpy as np

from .. import dtypes as _dt
from ..errors import DTypeError

_TO_NUMPY = {
    torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16), torch.bfloat16: _dt.bfloat16,
    torch.int8: np.dtype(np.int8), torch.uint8: np.dtype(np.uint8),
    torch.int16: np.dtype(np.int16), torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64), torch.bool: np.dtype(np.bool_),
    torch.complex64: np.dtype(np.complex64), torch.complex128: np.dtype(np.complex128),
    torch.float8_e4m3fn: _dt.float8_e4m3fn, torch.float8_e5m2: _dt.float8_e5m2,
    torch.uint16: np.dtype(np.uint16), torch.uint32: np.dtype(np.uint32),
    torch.uint64: np.dtype(np.uint64),
    torch.float8_e4m3fnuz: np.dtype(ml_dtypes.float8_e4m3fnuz),
    torch.float8_e5m2fnuz: np.dtype(ml_dtypes.float8_e5m2fnuz),
}
_FROM_NUMPY = {v.name: k for k, v in _TO_NUMPY.items()}
_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_SAME_SIZE_NP = {1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}


def to_numpy(t: "torch.Tensor") -> np.ndarray:
    """A NumPy view of a CPU tensor (no copy); bfloat16/float8 become ml_dtypes arrays."""
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.detach()
    try:
        dt = _TO_NUMPY[t.dtype]
    except KeyError:
        raise DTypeError(f"tensor dtype {t.dtype} has no NumPy equivalent here") from None
    if dt.kind in "Vu" or dt.name in ("bfloat16",) or dt.name.startswith("float8"):
        raw = t.view(_SAME_SIZE_INT[dt.itemsize]).numpy()
        return raw.view(dt)
    return t.numpy()


def from_numpy(a: np.ndarray) -> "torch.Tensor":
    """A CPU tensor sharing memory with ``a`` (bfloat16/float8 included)."""
    name = _dt.name_of(a.dtype)
    try:
        tdt = _FROM_NUMPY[name]
    except KeyError:
        raise DTypeError(f"dtype {a.dtype} has no torch equivalent here") from None
    if name == "bfloat16" or name.startswith("float8") or name in ("uint16", "uint32",
                                                                   "uint64"):
        raw = a.view(_SAME_SIZE_NP[a.dtype.itemsize])
        return torch.from_numpy(raw).view(tdt)
    return torch.from_numpy(a)


class DecoderLM(nn.Module):
    """The motivating model in torch: Embedding -> TransformerDecoder -> Linear.

    ``forward(tokens)`` takes [batch, seq] token ids and returns [batch, seq, vocab] logits.
    The decoder's memory is the embedded sequence itself, so both its self-attention and its
    cross-attention get the causal mask: position i sees positions <= i only, and the logits
    at i are a next-token prediction that cannot read token i + 1.  ``heads``,
    ``cross_heads`` and ``ffn`` may be one per layer and ``head_dim`` need not be
    d_model / heads: ``DecoderLM(**litecomp.shrink.ffn(...).config)`` loads a shrunk decoder
    with ``strict=True``.
    """

    def __init__(self, vocab=98631, d_model=512, heads=8, layers=6, ffn=2048, *,
                 head_dim=None, cross_heads=None):
        super().__init__()
        #: the sizes this model was built with (its keyword arguments), heads included
        self.config = {"vocab": vocab, "d_model": d_model, "heads": heads, "layers": layers,
                       "ffn": ffn}
        self.config.update({k: v for k, v in (("head_dim", head_dim),
                                              ("cross_heads", cross_heads)) if v is not None})
        self.embed = nn.Embedding(vocab, d_model)
        self.positional_encoding = nn.Parameter(torch.zeros(d_model))
        per_layer = isinstance(heads, (list, tuple)) or isinstance(ffn, (list, tuple)) or \
            head_dim is not None or cross_heads is not None
        layer = nn.TransformerDecoderLayer(d_model, 1 if per_layer else heads,
                                           dim_feedforward=2 if per_layer else ffn,
                                           dropout=0.0, batch_first=True)
        self.transformer_decoder = nn.TransformerDecoder(layer, layers)
        if per_layer:  # a shrunk decoder (litecomp.shrink): sizes per layer
            from .shrink import decoder_layers
            self.transformer_decoder.layers = decoder_layers(d_model, heads, layers, ffn,
                                                             head_dim, cross_heads)
        self.fc = nn.Linear(d_model, vocab)

    def forward(self, tokens):
        h = self.embed(tokens) + self.positional_encoding
        seq = tokens.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(seq, device=tokens.device,
                                                              dtype=h.dtype)
        h = self.transformer_decoder(h, h, tgt_mask=mask, memory_mask=mask,
                                     tgt_is_causal=True, memory_is_causal=True)
        return self.fc(h)


def numpy_state_dict(module: "nn.Module"):
    """``module.state_dict()`` as NumPy arrays (views, no copy: ``to_numpy``), in a
    ``litecomp.arch.StateDict`` carrying the module's config -- a ``DecoderLM``'s sizes, a
    Hugging Face model's ``config.to_dict()`` -- so ``litecomp.shrink`` knows the head count
    without being told."""
    from ..arch import StateDict
    cfg = getattr(module, "config", None)
    if cfg is not None and not isinstance(cfg, dict) and hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    return StateDict(((k, to_numpy(v)) for k, v in module.state_dict().items()),
                     config=cfg if isinstance(cfg, dict) else None)


def load_numpy_state_dict(module: "nn.Module", state_dict, strict=True):
    """``module.load_state_dict`` from a dict of NumPy arrays (copied into the module)."""
    return module.load_state_dict({k: from_numpy(np.ascontiguousarray(v))
                                   for k, v in state_dict.items()}, strict=strict)


from .quant import FakeQuantize  # noqa: E402,F401  (quantization-aware training)
from .distill import (DistillationLoss, FusedLinearDistillationLoss,  # noqa: E402,F401
                      distill_step, distillation_loss_torch, hidden_states)
from .features import FeatureDistillation  # noqa: E402,F401
from .prune import activation_stats, apply_masks, masks_from_module  # noqa: E402,F401
from .qlinear import QuantLinear, quantize_model  # noqa: E402,F401
from .oneshot import OneshotResult, oneshot  # noqa: E402,F401
from .shrink import LowRankLinear, apply_lowrank, apply_shrink  # noqa: E402,F401
from .export import compress  # noqa: E402,F401
from .qflows import (  # noqa: E402,F401  (torch.ao.quantization's workflows)
    QATLinear, QuantMultiheadAttention, calibrate, convert, get_default_qat_qconfig,
    get_default_qconfig, load_quantized, prepare, prepare_qat, qconfig, quantize,
    quantize_dynamic, quantized_state_dict, save_quantized,
)
