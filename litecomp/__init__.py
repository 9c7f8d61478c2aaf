"""litecomp: model compression (pruning, quantization, distillation) on NumPy arrays and
PyTorch-exported state dicts, with OpenMP C kernels.  torch is optional; interop lives in
``litecomp.torch``.
"""

try:
    from . import _C  # noqa: F401
except ImportError as exc:  # pragma: no cover - only when the build is missing
    raise ImportError(
        "litecomp's compiled extension (litecomp._C) is missing. Install litecomp with "
        "`pip install .` (or `pip install -e .` for development) from the source tree, "
        f"rather than importing the source folder directly. ({exc})") from exc

from ._runtime import (  # noqa: E402
    __version__, available_simd, build_info, detected_simd, get_num_threads, get_simd,
    set_num_threads, set_simd, simd, threads,
)
from . import errors, dtypes, core, random, examples  # noqa: E402
from .core import tensor_stats, to_float32, TensorStats  # noqa: E402
from . import distill  # noqa: E402
from . import prune, sparse  # noqa: E402
from .errors import (  # noqa: E402
    LitecompError, ArgumentError, DTypeError, ShapeError, NonFiniteError, FormatError,
    UnsafeCheckpointError,
)
from . import io  # noqa: E402
from .io import load, save, open  # noqa: E402,A004 - litecomp.open; builtins.open untouched
from . import quant  # noqa: E402
from . import calib  # noqa: E402
from . import export, compress  # noqa: E402

__all__ = [
    "__version__", "build_info", "set_num_threads", "get_num_threads", "threads",
    "set_simd", "get_simd", "simd", "detected_simd", "available_simd",
    "errors", "dtypes", "core", "random", "examples",
    "distill",
    "tensor_stats", "to_float32", "TensorStats",
    "LitecompError", "ArgumentError", "DTypeError", "ShapeError", "NonFiniteError",
    "FormatError", "UnsafeCheckpointError",
    "io", "load", "save",  # not "open": `from litecomp import *` must not shadow open()
    "prune", "sparse",
    "quant", "calib", "export", "compress",
]


def __getattr__(name):
    # litecomp.qmatmul moved to litecomp.quant.matmul; the old module is imported (and warns)
    # only when someone asks for it, so `import litecomp` stays silent.
    if name == "qmatmul":
        import importlib
        return importlib.import_module(".qmatmul", __name__)
    raise AttributeError(f"module 'litecomp' has no attribute {name!r}")
