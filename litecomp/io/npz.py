"""NumPy ``.npz`` archives: a zip of ``<name>.npy`` members.  Stored members (what
``numpy.savez`` writes) are memory-mapped in place; compressed ones are read on access."""

import io

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
    except (ValueError, SyntaxError, EOFError) as exc:
        raise FormatError(f"{what}: bad .npy header ({exc})") from None
    if dtype.hasobject:
        raise FormatError(f"{what}: object arrays need pickle and are not read")
    return dtype, shape, fortran, f.tell()


def array_from(buf, m: zipfmt.Member, what: str) -> np.ndarray:
    if m.method != 0:
        data = zipfmt.read_member_bytes(buf, m, what, limit=1 << 62)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise FormatError(f"{what}: member {m.name} is not a .npy array ({exc})") from None
    head = bytes(buf[m.offset:m.offset + min(m.size, MAX_HEADER)])
    dtype, shape, fortran, hlen = npy_header(head, f"{what}: {m.name}")
    count = 1
    for s in shape:
        count *= s
    if hlen + count * dtype.itemsize > m.size:
        raise FormatError(f"{what}: member {m.name} is shorter than its header says")
    a = np.frombuffer(buf, dtype, count, m.offset + hlen)
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
