"""Quantization: uniform 2-8 bit tensors (``quantize`` -> ``QTensor``), torch-exact
quantize_per_tensor / quantize_per_channel and observers, fake quantization with
gradients, GGUF block formats, NF4/FP4 and codebooks, float casts, the state-dict workflow,
and the kernels that run quantized Linear layers (``linear``, ``prepare_linear``,
``litecomp.quant.matmul``).  See docs/quant.md and docs/quant-matmul.md."""

from . import calibrate, codebook, gguf, matmul  # noqa: F401
from .calibrate import HistogramObserver, histc, l2_range_search  # noqa: F401
from .codebook import (  # noqa: F401
    CodebookTensor, Quant4, codebook_quantize, kmeans_1d, quantize_4bit,
)
from .core import (  # noqa: F401
    BITS, SCHEMES, QTensor, calc_qparams, cast, pack_codes, quantize, quantize_per_channel,
    quantize_per_tensor, unpack_codes,
)
from .awq import awq_clip, awq_scales, smoothquant_scales  # noqa: F401
from .gptq import gptq  # noqa: F401
from .fake import fake_quantize, fake_quantize_backward  # noqa: F401
from .matmul import linear, prepare_linear  # noqa: F401
from .observers import (  # noqa: F401
    MinMaxObserver, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
    PerChannelMinMaxObserver, qrange,
)
from .state import (  # noqa: F401
    QuantError, dequantize_state_dict, error_report, load_quantized, quantize_one,
    quantize_state_dict, quantized_names,
)

__all__ = [
    "BITS", "SCHEMES", "QTensor", "quantize", "calc_qparams", "cast", "pack_codes",
    "unpack_codes", "quantize_per_tensor", "quantize_per_channel", "fake_quantize",
    "fake_quantize_backward", "MinMaxObserver", "MovingAverageMinMaxObserver",
    "PerChannelMinMaxObserver", "MovingAveragePerChannelMinMaxObserver", "qrange",
    "QuantError", "quantize_state_dict", "dequantize_state_dict", "error_report",
    "quantized_names", "gguf", "codebook", "Quant4", "quantize_4bit", "CodebookTensor",
    "codebook_quantize", "kmeans_1d", "load_quantized", "quantize_one", "calibrate",
    "HistogramObserver", "histc", "l2_range_search", "matmul", "linear", "prepare_linear",
    "gptq", "awq_scales", "awq_clip", "smoothquant_scales",
]
