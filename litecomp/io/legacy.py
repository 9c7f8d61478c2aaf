"""Legacy (pre-1.6, ``_use_new_zipfile_serialization=False``) torch files: a stream of
pickles -- magic number, protocol version, sys_info, the object (storages as persistent
ids), the list of storage keys -- then each storage as an 8-byte element count followed by
its bytes, in the order of that list."""

import struct

from ..errors import FormatError
from .unpickler import loads, storage_from_pid

MAGIC = 0x1950A86A20F9469CFC6C
PROTOCOL = 1001
# A pickle of MAGIC starts with PROTO 2, LONG1 10 and the integer's ten bytes.
SIGNATURE = b"\x80\x02\x8a\x0a" + MAGIC.to_bytes(10, "little")


class LegacyFile:
    """Parsed legacy file on a buffer: ``obj`` with TensorRef leaves, and for each storage
    key the (offset, element count) of its bytes."""

    def __init__(self, buf, what):
        self.what = what
        magic, pos = loads(buf, _no_pid)
        if magic != MAGIC:
            raise FormatError(f"{what}: not a legacy torch file (bad magic number)")
        proto, pos = loads(buf, _no_pid, pos=pos)
        if proto != PROTOCOL:
            raise FormatError(f"{what}: legacy torch protocol {proto!r} is not {PROTOCOL}")
        sys_info, pos = loads(buf, _no_pid, pos=pos)
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        self.big_endian = not little
        self.storages = {}
        self.obj, pos = loads(buf, self._persistent_load, pos=pos)
        keys, pos = loads(buf, _no_pid, pos=pos)
        if not isinstance(keys, list) or not all(type(k) is str for k in keys):
            raise FormatError(f"{what}: legacy storage key list is malformed")
        self.data = {}
        fmt = "<q" if little else ">q"
        for key in keys:
            ref = self.storages.get(key)
            if ref is None:
                raise FormatError(f"{what}: storage {key!r} is listed but never used")
            if pos + 8 > len(buf):
                raise FormatError(f"{what}: file is truncated in storage {key!r}")
            (numel,) = struct.unpack(fmt, buf[pos:pos + 8])
            pos += 8
            item = 1 if ref.dtype is None else ref.dtype.numpy.itemsize
            if numel < 0 or numel < ref.numel or pos + numel * item > len(buf):
                raise FormatError(f"{what}: storage {key!r} declares {numel} elements; the "
                                  "file is truncated or inconsistent")
            self.data[key] = pos
            pos += numel * item
        missing = set(self.storages) - set(self.data)
        if missing:
            raise FormatError(f"{what}: storages {sorted(missing)} have no data")

    def _persistent_load(self, pid):
        if type(pid) is tuple and len(pid) == 6 and pid[5] is not None:
            raise FormatError(f"{self.what}: legacy storage views are not supported")
        ref = storage_from_pid(pid)
        self.storages.setdefault(ref.key, ref)
        return ref


def _no_pid(pid):
    raise FormatError("legacy torch file: unexpected persistent id in a header pickle")
