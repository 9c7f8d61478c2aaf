"""The safetensors format: an 8-byte little-endian header length N, N bytes of JSON
{name: {dtype, shape, data_offsets}} (plus an optional "__metadata__" of str -> str),
padded with spaces to a multiple of 8, then the tensors' bytes, little-endian, C order.

Reading validates the header completely (size limit, JSON, dtypes, shapes, offsets that
neither overlap nor leave gaps nor run past the file) before any tensor is touched.
"""

import json
import struct

import numpy as np

from ..dtypes import name_of
from ..errors import FormatError
from . import dtypes as _dt

MAX_HEADER = 100_000_000
_DTYPES = {st: _dt.numpy_dtype(name) for st, name in _dt.SAFETENSORS.items()}


class Header:
    def __init__(self, entries, metadata, data_start):
        self.entries = entries          # {name: (dtype, shape, begin, end)} in header order
        self.metadata = metadata
        self.data_start = data_start


def _no_duplicates(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise FormatError(f"safetensors header: key {k!r} appears twice")
        d[k] = v
    return d


def _parse(raw: bytes, what: str):
    """The header JSON, with duplicate keys rejected.  The duplicate check (a Python hook
    per object) runs only when a cheap count says a key may repeat: each of "dtype",
    "shape" and "data_offsets" must appear exactly once per tensor."""
    try:
        text = raw.decode("utf-8")
        header = json.loads(text)
        if isinstance(header, dict):
            n = len(header) - ("__metadata__" in header)
            if any(text.count(k) != n for k in ('"dtype"', '"shape"', '"data_offsets"')) \
                    or text.count('"__metadata__"') > 1:
                header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{what}: safetensors header is not valid JSON ({exc})") from None
    return header


def read_header(f, file_size: int, what: str) -> Header:
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise FormatError(f"{what}: too short for a safetensors file ({file_size} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER:
        raise FormatError(f"{what}: safetensors header of {n} bytes exceeds the "
                          f"{MAX_HEADER}-byte limit")
    if 8 + n > file_size:
        raise FormatError(f"{what}: safetensors header of {n} bytes runs past the end of "
                          f"the file ({file_size} bytes)")
    raw = f.read(n)
    header = _parse(raw, what)
    if not isinstance(header, dict):
        raise FormatError(f"{what}: safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise FormatError(f"{what}: safetensors __metadata__ must map strings to strings")
    data_size = file_size - 8 - n
    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise FormatError(f"{what}: safetensors entry {name!r} must have exactly dtype, "
                              "shape and data_offsets")
        dt = _DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dt is None:
            raise FormatError(f"{what}: tensor {name!r} has unknown safetensors dtype "
                              f"{info['dtype']!r}")
        shape, offs = info["shape"], info["data_offsets"]
        nbytes = dt.itemsize
        if type(shape) is not list:
            raise FormatError(f"{what}: tensor {name!r} has invalid shape {shape!r}")
        for s in shape:
            if type(s) is not int or s < 0:
                raise FormatError(f"{what}: tensor {name!r} has invalid shape {shape!r}")
            nbytes *= s
        if not (type(offs) is list and len(offs) == 2 and type(offs[0]) is int
                and type(offs[1]) is int and 0 <= offs[0] <= offs[1]):
            raise FormatError(f"{what}: tensor {name!r} has invalid data_offsets {offs!r}")
        if offs[1] - offs[0] != nbytes:
            raise FormatError(f"{what}: tensor {name!r} of dtype {info['dtype']} and shape "
                              f"{shape} needs {nbytes} bytes, data_offsets give "
                              f"{offs[1] - offs[0]}")
        if offs[1] > data_size:
            raise FormatError(f"{what}: tensor {name!r} data_offsets {offs} run past the "
                              f"data section ({data_size} bytes; file truncated?)")
        entries[name] = (dt, tuple(shape), offs[0], offs[1])
    pos = 0
    for name, (_dt_, _s, begin, end) in sorted(entries.items(), key=lambda kv: kv[1][2:]):
        if begin != pos:
            raise FormatError(f"{what}: tensor {name!r} starts at {begin}, expected {pos} "
                              "(overlapping tensors or a gap in the data section)")
        pos = end
    if pos != data_size:
        raise FormatError(f"{what}: the tensors cover {pos} bytes of a {data_size}-byte data "
                          "section")
    return Header(entries, metadata, 8 + n)


def array(f, buf, header: Header, name: str, what: str) -> np.ndarray:
    dt, shape, begin, end = header.entries[name]
    file_dt = dt.newbyteorder("<") if dt.itemsize > 1 and dt.kind in "iufc" else dt
    count = (end - begin) // dt.itemsize
    if buf is not None:
        a = np.frombuffer(buf, file_dt, count, header.data_start + begin)
    else:
        a = np.empty(count, file_dt)
        f.seek(header.data_start + begin)
        if f.readinto(a.view(np.uint8)) != a.nbytes:
            raise FormatError(f"{what}: tensor {name!r} is truncated")
    if not file_dt.isnative:
        a = a.astype(dt.newbyteorder("="))
    return a.reshape(shape)


def write(arrays: dict, f, metadata=None):
    """Write ``arrays`` (native little-endian NumPy arrays) to the binary file ``f``.

    The header lists tensors in the dict's order; the data section holds them by
    decreasing item size, so every tensor of a memory-mapped file is aligned."""
    names = list(arrays)
    layout = sorted(names, key=lambda n: -arrays[n].dtype.itemsize)
    offsets, pos = {}, 0
    for n in layout:
        offsets[n] = (pos, pos + arrays[n].nbytes)
        pos += arrays[n].nbytes
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    for n in names:
        a = arrays[n]
        header[n] = {"dtype": _dt.SAFETENSORS_OF[name_of(a.dtype)],
                     "shape": list(a.shape), "data_offsets": list(offsets[n])}
    js = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    js += b" " * (-len(js) % 8)
    f.write(struct.pack("<Q", len(js)) + js)
    for n in layout:
        a = _dt.contiguous(arrays[n])
        if a.size:
            f.write(a.reshape(-1).view(np.uint8))
