"""NumPy ``.npz`` archives: a zip of ``<name>.npy`` members.  Stored members (what
``numpy.savez`` writes) are memory-mapped in place; compressed ones are read on access."""

import io
import math
import tokenize

import numpy as np

from ..errors import FormatError
from . import dtypes as _dt
from . import zipfmt

MAX_HEADER = 1 << 16


def npy_header(head: bytes, what: str):
    """(dtype, shape, fortran_order, header length) of a .npy header (no pickles)."""
    f = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, SyntaxError, EOFError, TypeError, tokenize.TokenError,
            RecursionError) as exc:
        # numpy parses the header dict with tokenize and ast.literal_eval: on hostile
        # bytes each of these can escape it
        raise FormatError(f"{what}: bad .npy header ({exc})") from None
    if dtype.hasobject:
        raise FormatError(f"{what}: object arrays need pickle and are not read")
    if any(s < 0 for s in shape):     # numpy's parser takes (-1, 3); reshape would guess
        raise FormatError(f"{what}: .npy shape {shape} has a negative size")
    return dtype, shape, fortran, f.tell()


def array_from(buf, m: zipfmt.Member, what: str) -> np.ndarray:
    """The array of member ``m``: stored members are views of ``buf``, deflated ones are
    decompressed (only after their header said how big the array is)."""
    if m.method != 0:
        info(buf, m, what)              # a bad header fails before the member inflates
        data = bytearray(zipfmt.read_member_bytes(buf, m, what, limit=1 << 62))
        return _array(data, 0, len(data), m.name, what)
    return _array(buf, m.offset, m.size, m.name, what)


def info(buf, m: zipfmt.Member, what: str):
    """(dtype, shape) of member ``m`` from its header alone (a deflated member inflates
    only its first MAX_HEADER bytes)."""
    if m.method == 0:
        head = bytes(buf[m.offset:m.offset + min(m.size, MAX_HEADER)])
    else:
        head = zipfmt.read_member_head(buf, m, what, MAX_HEADER)
    dtype, shape, _fortran, hlen = npy_header(head, f"{what}: {m.name}")
    if hlen + math.prod(shape) * dtype.itemsize > m.size:
        raise FormatError(f"{what}: member {m.name} is shorter than its header says")
    return dtype, shape


def _array(buf, start, size, member, what):
    head = bytes(buf[start:start + min(size, MAX_HEADER)])
    dtype, shape, fortran, hlen = npy_header(head, f"{what}: {member}")
    count = 1
    for s in shape:
        count *= s
    if hlen + count * dtype.itemsize > size:
        raise FormatError(f"{what}: member {member} is shorter than its header says")
    a = np.frombuffer(buf, dtype, count, start + hlen)
    if not dtype.isnative:
        a = a.astype(dtype.newbyteorder("="))
    return a.reshape(shape[::-1]).T if fortran else a.reshape(shape)


def write(arrays: dict, f):
    z = zipfmt.ZipWriter(f)
    for name, a in arrays.items():
        a = _dt.contiguous(a)
        hdr = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            hdr, {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False,
                  "shape": a.shape})
        z.add_parts(name + ".npy", [hdr.getvalue(), a.reshape(-1).view(np.uint8)])
    z.close()
