"""torch.save's zip format: read any checkpoint torch writes, write files torch reads with
``weights_only=True``.

Reading unpickles ``data.pkl`` with litecomp's allowlist VM (unpickler.py), which yields
tensor descriptions; each storage ``data/<key>`` is then mapped (or read) once and every
tensor on it becomes a view, so tied weights share memory as they did in torch.
"""

import hashlib
import math
import os
import zipfile

import numpy as np
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    byte_bounds = np.byte_bounds

from ..dtypes import name_of
from ..errors import FormatError
from . import dtypes as _dt
from . import zipfmt
from .unpickler import PickleWriter, TensorRef, loads, storage_from_pid

MAX_PICKLE = 16 << 20       # ~100 bytes per tensor; unpickler.MAX_CONTAINERS allows 60k


class TorchZip:
    """A torch zip checkpoint open for reading: ``obj`` is the unpickled object with
    TensorRef leaves; ``array(ref)`` makes one of them an array."""

    def __init__(self, f, buf, what, members=None):
        self.what = what
        self.buf = buf                      # mmap (or None: read storages with f)
        self.f = f
        self.members = (members if members is not None
                        else zipfmt.read_members(f, zipfmt.file_size(f), what, buf))
        pkl = next((n for n in self.members if n == "data.pkl" or n.endswith("/data.pkl")),
                   None)
        if pkl is None:
            raise FormatError(f"{what}: zip archive without data.pkl; not a torch checkpoint")
        self.prefix = pkl[:-len("data.pkl")]
        order = self.members.get(self.prefix + "byteorder")
        self.big_endian = False
        if order is not None:
            text = self._member_bytes(order, 16).decode("ascii", "replace")
            if text not in ("little", "big"):
                raise FormatError(f"{what}: byteorder record says {text!r}")
            self.big_endian = text == "big"
        self.storages = {}
        data = self._member_bytes(self.members[pkl], MAX_PICKLE)
        self.obj, _end = loads(data, self._persistent_load)
        self._bases = {}

    def _member_bytes(self, m, limit):
        if self.buf is not None:
            return zipfmt.read_member_bytes(self.buf, m, self.what, limit)
        self.f.seek(m.offset)
        return zipfmt.read_member_bytes(self.f.read(m.csize), zipfmt.Member(
            m.name, 0, m.size, m.csize, m.method, m.crc), self.what, limit)

    def _persistent_load(self, pid):
        ref = storage_from_pid(pid)
        seen = self.storages.get(ref.key)
        if seen is None:
            m = self.members.get(f"{self.prefix}data/{ref.key}")
            if m is None:
                raise FormatError(f"{self.what}: storage {ref.key!r} is not in the archive")
            itemsize = 1 if ref.dtype is None else ref.dtype.numpy.itemsize
            if ref.numel * itemsize > m.size:
                raise FormatError(f"{self.what}: storage {ref.key!r} declares "
                                  f"{ref.numel * itemsize} bytes but its record has {m.size}")
            self.storages[ref.key] = ref
        return ref

    # -------------------------------------------------------------- arrays
    def _base(self, ref: TensorRef) -> np.ndarray:
        """The whole storage as a 1-D array of the tensor's dtype (cached: views share it)."""
        st = ref.storage
        dt = ref.dtype.numpy
        key = (st.key, dt.str)
        base = self._bases.get(key)
        if base is not None:
            return base
        m = self.members[f"{self.prefix}data/{st.key}"]
        nbytes = st.numel * (1 if st.dtype is None else st.dtype.numpy.itemsize)
        count = nbytes // dt.itemsize
        file_dt = dt.newbyteorder(">") if self.big_endian and dt.itemsize > 1 else dt
        if m.method != zipfile.ZIP_STORED:
            raw = np.frombuffer(self._member_bytes(m, m.size), np.uint8)
            base = raw[:count * dt.itemsize].view(file_dt).copy()
        elif self.buf is not None:
            base = np.frombuffer(self.buf, file_dt, count, m.offset)
        else:
            base = np.empty(count, file_dt)
            self.f.seek(m.offset)
            if self.f.readinto(base.view(np.uint8)) != base.nbytes:
                raise FormatError(f"{self.what}: storage {st.key!r} is truncated")
        if file_dt is not dt:
            base = base.astype(dt)
        self._bases[key] = base
        return base

    def array(self, ref: TensorRef) -> np.ndarray:
        return view_of(self._base(ref), ref, self.what)


def view_of(base, ref, what):
    """The tensor ``ref`` as a view of its storage ``base`` (bounds checked)."""
    shape, strides, offset = ref.shape, ref.strides, ref.offset
    n = math.prod(shape)                 # Python ints: hostile shapes cannot overflow
    if n * base.dtype.itemsize >= 1 << 62:
        raise FormatError(f"{what}: tensor shape {shape} is absurdly large")
    if n == 0:
        return np.empty(shape, base.dtype)
    last = offset + sum((s - 1) * st for s, st in zip(shape, strides))
    if last >= base.size:
        raise FormatError(f"{what}: tensor of shape {shape} at offset {offset} runs past "
                          f"its storage {ref.storage.key!r} ({base.size} elements)")
    c_strides, acc = [], 1
    for s in reversed(shape):
        c_strides.append(acc)
        acc *= s
    if tuple(reversed(c_strides)) == tuple(strides) or n == 1:
        return base[offset:offset + n].reshape(shape)
    return strided_view(base, offset, shape, strides)


def strided_view(base, offset, shape, strides):
    """A view of the 1-D array ``base`` (whose ``.base`` chain leads back to it, so
    writers can see the sharing); overlapping views are read-only."""
    item = base.dtype.itemsize
    v = np.ndarray(shape, base.dtype, buffer=base, offset=offset * item,
                   strides=[st * item for st in strides])
    if any(st == 0 and s > 1 for s, st in zip(shape, strides)) or not base.flags.writeable:
        v.flags.writeable = False
    return v


# ------------------------------------------------------------------ writing
def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def plan_storages(arrays: dict):
    """Group arrays that share memory into one storage each.

    Returns (storages, tensors): storages is a list of contiguous arrays to write as
    data/0, data/1, ...; tensors maps each name to (storage index, dtype name, storage
    numel, element offset, shape, element strides).
    """
    groups = {}
    for name, a in arrays.items():
        key = (id(_root(a)), a.dtype.str) if a.size else ("own", name)
        groups.setdefault(key, []).append(name)
    storages, tensors = [], {}
    for key, names in groups.items():
        members = [arrays[n] for n in names]
        shared = len(members) > 1 and _shared_region(members)
        if shared:
            region, lo = shared
            idx = len(storages)
            storages.append(region)
            item = region.dtype.itemsize
            for name, a in zip(names, members):
                start = byte_bounds(a)[0]
                tensors[name] = (idx, name_of(a.dtype), region.size, (start - lo) // item,
                                 a.shape, tuple(s // item for s in a.strides))
            continue
        for name, a in zip(names, members):
            c = _dt.contiguous(a)
            idx = len(storages)
            storages.append(c)
            strides, acc = [], 1
            for s in reversed(c.shape):
                strides.append(acc)
                acc *= s
            tensors[name] = (idx, name_of(c.dtype), c.size, 0, c.shape,
                             tuple(reversed(strides)))
    return storages, {n: tensors[n] for n in arrays}


def _shared_region(members):
    """(region array, region start address) covering all members, or None when they
    cannot be described as views of one storage (then each is written on its own)."""
    root = _root(members[0])
    item = members[0].dtype.itemsize
    if not root.flags.c_contiguous:
        return None
    bounds = []
    for a in members:
        if any(s < 0 or s % item for s in a.strides):
            return None
        bounds.append(byte_bounds(a))
    lo = min(b[0] for b in bounds)
    hi = max(b[1] for b in bounds)
    rlo, rhi = byte_bounds(root)
    if lo < rlo or hi > rhi or (hi - lo) % item or any((b[0] - lo) % item for b in bounds):
        return None
    flat = root.reshape(-1).view(np.uint8)
    return flat[lo - rlo:hi - rlo].view(members[0].dtype), lo


def write(arrays: dict, f, archive: str, *, zip64_limit=zipfmt.ZIP64_LIMIT,
          byteorder="little"):
    """Write ``arrays`` (native-endian NumPy arrays of dtypes in dtypes.TORCH) to the
    binary file ``f`` as torch.save would."""
    storages, tensors = plan_storages(arrays)
    pw = PickleWriter()

    def emitter(t):
        idx, dname, numel, offset, shape, strides = t
        return lambda: pw.tensor(dname, str(idx), numel, offset, shape, strides)

    pw.dict_([(name, emitter(t)) for name, t in tensors.items()])
    pickle = pw.finish()
    z = zipfmt.ZipWriter(f, zip64_limit=zip64_limit)
    p = archive + "/"
    digest = hashlib.sha256(pickle)
    z.add(p + "data.pkl", pickle)
    z.add(p + ".format_version", b"1")
    z.add(p + ".storage_alignment", b"64")
    z.add(p + "byteorder", byteorder.encode())
    for i, s in enumerate(storages):
        if byteorder == "big" and s.dtype.itemsize > 1:
            s = s.byteswap()
        crc = z.add(f"{p}data/{i}", s.reshape(-1).view(np.uint8))
        digest.update(crc.to_bytes(4, "little") + s.nbytes.to_bytes(8, "little"))
    z.add(p + "version", b"3\n")
    # torch writes a random 40-digit id; a digest of the content keeps output deterministic.
    z.add(p + ".data/serialization_id", str(int(digest.hexdigest(), 16))[:40].encode())
    z.close()


def archive_name(path) -> str:
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0]
    return stem or "archive"
