"""llama.cpp's own quantizers through ctypes, when its ggml-base library is available:
LITECOMP_GGML_LIB names libggml-base.so (tools/build_ggml.sh builds it from the
llama-cpp-python sdist), else /tmp/litecomp-ggml/libggml-base.so is tried.  `why_missing()`
says why it cannot be used."""

import ctypes
import os

import numpy as np

DEFAULT = "/tmp/litecomp-ggml/libggml-base.so"
_lib = None
_why = None


def _load():
    global _lib, _why
    if _lib is not None or _why is not None:
        return _lib
    path = os.environ.get("LITECOMP_GGML_LIB", DEFAULT)
    if not os.path.exists(path):
        _why = (f"llama.cpp's libggml-base.so not found at {path} (build it with "
                "tools/build_ggml.sh, or set LITECOMP_GGML_LIB)")
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                            ctypes.c_void_p]
        lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    except (OSError, AttributeError) as exc:
        _why = f"cannot use {path}: {exc}"
        return None
    _lib = lib
    return lib


def why_missing():
    return None if _load() is not None else _why


def quantize(x, type_id, block_bytes, imatrix=None):
    """ggml_quantize_chunk (what llama-quantize calls) on a 2-D float32 array."""
    lib = _load()
    x = np.ascontiguousarray(x, np.float32)
    rows, n = x.shape
    out = np.zeros(rows * (n // 256) * block_bytes, np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, np.float32)
    lib.ggml_quantize_init(type_id)
    lib.ggml_quantize_chunk(type_id, x.ctypes.data, out.ctypes.data, 0, rows, n,
                            None if im is None else im.ctypes.data)
    return out.reshape(rows, -1)
