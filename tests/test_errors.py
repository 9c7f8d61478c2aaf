import numpy as np
import pytest

import litecomp
from litecomp import _C
from litecomp import errors


def test_family_and_builtin_bases():
    assert issubclass(errors.ArgumentError, ValueError)
    assert issubclass(errors.ShapeError, ValueError)
    assert issubclass(errors.DTypeError, TypeError)
    assert issubclass(errors.NonFiniteError, errors.ArgumentError)
    assert issubclass(errors.UnsafeCheckpointError, errors.FormatError)
    for cls in (errors.ArgumentError, errors.DTypeError, errors.ShapeError,
                errors.NonFiniteError, errors.FormatError, errors.UnsafeCheckpointError):
        assert issubclass(cls, errors.LitecompError)


def test_wrong_dtype_names_argument_and_dtype():
    with pytest.raises(litecomp.DTypeError, match=r"x: dtype int32 .* float32"):
        litecomp.tensor_stats(np.arange(4, dtype=np.int32))
    with pytest.raises(TypeError):  # catchable as the builtin too
        litecomp.to_float32(np.zeros(3, np.complex64))


def test_not_an_array():
    with pytest.raises(litecomp.ArgumentError, match="x: expected an array, got None"):
        litecomp.tensor_stats(None)


def test_out_argument_checked():
    with pytest.raises(litecomp.DTypeError, match="out"):
        litecomp.to_float32(np.zeros(3), out=np.zeros(3))
    with pytest.raises(litecomp.ShapeError, match="out: has 4 elements, src has 3"):
        litecomp.to_float32(np.zeros(3), out=np.zeros(4, np.float32))
    with pytest.raises(litecomp.ArgumentError, match="out: must be a writeable"):
        litecomp.to_float32(np.zeros(3), out=np.zeros(6, np.float32)[::2])


def test_c_entry_points_recheck_and_never_misread():
    """Even if the Python layer is bypassed, C refuses arrays it would misread."""
    strided = np.zeros(10, np.float32)[::2]
    with pytest.raises(litecomp.ArgumentError, match="x must be a C-contiguous"):
        _C.tensor_stats(strided, 0)
    with pytest.raises(litecomp.DTypeError, match="itemsize 8 does not match dtype F32"):
        _C.tensor_stats(np.zeros(3), 0)
    with pytest.raises(litecomp.DTypeError, match="unknown litecomp dtype code 99"):
        _C.tensor_stats(np.zeros(3, np.float32), 99)
    with pytest.raises(litecomp.DTypeError, match="x: unsupported dtype"):
        _C.tensor_stats(np.zeros(3, np.int32), 9)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(litecomp.ArgumentError, match="writeable"):
        _C.to_float32(np.zeros(4, np.float32), 0, ro)
    with pytest.raises(litecomp.ShapeError, match="dst: 3 bytes, src: 4 bytes"):
        _C.stream_copy(np.zeros(3, np.uint8), np.zeros(4, np.uint8))


@pytest.mark.parametrize("call, match", [
    (lambda: litecomp.random.uniform(3, seed=-1), "seed"),
    (lambda: litecomp.random.uniform(3, low=float("nan")), "low: must be finite"),
    (lambda: litecomp.random.normal(3, std=-1.0), "std"),
    (lambda: litecomp.random.normal(3, dtype=np.int32), "dtype"),
    (lambda: litecomp.examples.decoder_lm(d_model=10, heads=3), "heads"),
    (lambda: litecomp.examples.decoder_lm(vocab=0), "vocab"),
])
def test_argument_errors_name_the_argument(call, match):
    with pytest.raises(litecomp.ArgumentError, match=match):
        call()
