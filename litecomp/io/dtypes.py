"""The dtype names each checkpoint format uses, mapped to NumPy dtypes (bfloat16 and the
float8 kinds through ml_dtypes)."""

import ml_dtypes
import numpy as np

# litecomp/numpy dtype name -> (torch dtype name, legacy typed-storage class or None).
# dtypes with a storage class are pickled as _rebuild_tensor_v2 on a typed storage; the
# rest as _rebuild_tensor_v3 on an UntypedStorage (torch/_tensor.py does the same).
TORCH = {
    "float32": ("float32", "FloatStorage"),
    "float64": ("float64", "DoubleStorage"),
    "float16": ("float16", "HalfStorage"),
    "bfloat16": ("bfloat16", "BFloat16Storage"),
    "int64": ("int64", "LongStorage"),
    "int32": ("int32", "IntStorage"),
    "int16": ("int16", "ShortStorage"),
    "int8": ("int8", "CharStorage"),
    "uint8": ("uint8", "ByteStorage"),
    "bool": ("bool", "BoolStorage"),
    "complex64": ("complex64", "ComplexFloatStorage"),
    "complex128": ("complex128", "ComplexDoubleStorage"),
    "uint16": ("uint16", None),
    "uint32": ("uint32", None),
    "uint64": ("uint64", None),
    "float8_e4m3fn": ("float8_e4m3fn", None),
    "float8_e5m2": ("float8_e5m2", None),
    "float8_e4m3fnuz": ("float8_e4m3fnuz", None),
    "float8_e5m2fnuz": ("float8_e5m2fnuz", None),
}

# torch dtype attribute names that are aliases of the names above.
TORCH_ALIASES = {"float": "float32", "double": "float64", "half": "float16",
                 "long": "int64", "int": "int32", "short": "int16",
                 "cfloat": "complex64", "cdouble": "complex128"}

# safetensors dtype name <-> NumPy dtype name.
SAFETENSORS = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
    "F16": "float16", "BF16": "bfloat16", "I32": "int32", "U32": "uint32",
    "F32": "float32", "F64": "float64", "I64": "int64", "U64": "uint64",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
    "F8_E8M0": "float8_e8m0fnu",
}
SAFETENSORS_OF = {v: k for k, v in SAFETENSORS.items()}


def numpy_dtype(name: str) -> np.dtype:
    """NumPy dtype for a NumPy/ml_dtypes dtype name ('bfloat16', 'float8_e4m3fn', ...)."""
    if hasattr(ml_dtypes, name):
        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def contiguous(a):
    """C-contiguous ``a`` (no copy when it already is), keeping 0-d arrays 0-d, unlike
    ``np.ascontiguousarray``."""
    return a if a.flags.c_contiguous else np.array(a, order="C")
