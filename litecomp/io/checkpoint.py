"""Opening any supported checkpoint: format detection from the content, and ``Checkpoint``,
the lazy read-only mapping ``litecomp.open`` returns (``litecomp.load`` is built on it)."""

import mmap as _mmap
import os
import reprlib
from collections.abc import Mapping

import numpy as np

from ..errors import ArgumentError, FormatError
from . import legacy, npz, safetensors, shards, torchzip, zipfmt
from .files import open_regular
from .unpickler import TensorRef

FORMATS = ("torch", "torch-legacy", "safetensors", "npz", "shards")


def detect(path) -> str:
    """The format of the file or folder at ``path``, from its content: one of FORMATS."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = shards.resolve_folder(path)
    fmt = _sniff(path)
    if fmt == "zip":
        with open_regular(path) as f:
            fmt = zip_kind(zipfmt.read_members(f, zipfmt.file_size(f), path), path)
    return fmt


def _sniff(path) -> str:
    """detect() from the first bytes only ("zip" for torch and npz alike)."""
    with open_regular(path) as f:
        head = f.read(16)
        size = zipfmt.file_size(f)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"              # torch or npz: told apart from the member names on opening
    if head[:14] == legacy.SIGNATURE:
        return "torch-legacy"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    if path.endswith(".safetensors"):   # let the header check say what is wrong
        return "safetensors"
    if head.lstrip()[:1] == b"{" and path.endswith(".json"):
        return "shards"
    raise FormatError(f"{path}: not a format litecomp reads (torch zip or legacy .pth/.bin, "
                      ".safetensors, .npz, or a shard index)")


def zip_kind(members, what) -> str:
    names = list(members)
    if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        return "torch"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    raise FormatError(f"{what}: a zip archive that is neither a torch checkpoint "
                      "(no data.pkl) nor an .npz (members other than .npy)")


def _read_all(f, size):
    """The whole file in a writeable buffer (arrays made on it are writeable)."""
    buf = bytearray(size)
    f.seek(0)
    if f.readinto(buf) != size:
        raise FormatError(f"{f.name}: file shrank while being read")
    return buf


def select(obj, key, what):
    """The flat {name: TensorRef-or-array} that ``key`` names inside a checkpoint object."""
    if key is not None:
        path = list(key) if isinstance(key, (tuple, list)) else [key]
        for k in path:
            if not isinstance(obj, dict) or k not in obj:
                have = list(obj) if isinstance(obj, dict) else []
                raise ArgumentError(f"key: {k!r} is not in the checkpoint; its keys are "
                                    f"{_keys(have)}")
            obj = obj[k]
    if isinstance(obj, TensorRef):
        raise FormatError(f"{what}: holds a single tensor, not a dict of tensors")
    if not isinstance(obj, dict):
        raise FormatError(f"{what}: holds a {type(obj).__name__}, not a dict of tensors")
    bad = [k for k, v in obj.items() if not isinstance(v, (TensorRef, np.ndarray))]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], dict)]
        hint = (f"; pass key= to choose a nested state dict, e.g. key={nested[0]!r}"
                if nested else "")
        raise FormatError(f"{what}: not a flat state dict: entries {_keys(bad)} are not "
                          f"tensors (keys: {_keys(list(obj))}){hint}")
    notstr = [k for k in obj if type(k) is not str]
    if notstr:
        raise FormatError(f"{what}: tensor names must be strings, got {_keys(notstr)}")
    return obj


def _keys(keys, limit=12):
    shown = ", ".join(reprlib.repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"


class _Source:
    """One open file: ``names`` in file order, ``info(name)`` -> (dtype, shape) without
    reading data, ``array(name)`` -> ndarray."""

    def __init__(self, path, fmt, access, key):
        self.path = os.fspath(path)
        self.f = open_regular(self.path)
        try:
            size = zipfmt.file_size(self.f)
            self.buf = (_mmap.mmap(self.f.fileno(), 0, access=access)
                        if access is not None and size else None)
            self.metadata = None
            members = None
            if fmt == "zip":
                members = zipfmt.read_members(self.f, size, self.path, self.buf)
                fmt = zip_kind(members, self.path)
            self.format = fmt
            self._open(fmt, key, size, members)
        except BaseException:
            self.close()
            raise

    def _open(self, fmt, key, size, members):
        what = self.path
        if fmt == "torch":
            self.tz = torchzip.TorchZip(self.f, self.buf, what, members)
            self.refs = select(self.tz.obj, key, what)
        elif fmt == "torch-legacy":
            if self.buf is None:
                self.buf = _read_all(self.f, size)
            self.lg = legacy.LegacyFile(self.buf, what)
            self.refs = select(self.lg.obj, key, what)
            self._bases = {}
        elif fmt == "safetensors":
            self._no_key(key)
            self.header = safetensors.read_header(self.f, size, what)
            self.metadata = self.header.metadata
            self.refs = dict.fromkeys(self.header.entries)
        elif fmt == "npz":
            self._no_key(key)
            if self.buf is None:
                self.buf = _read_all(self.f, size)
            self.refs = {n[:-4]: m for n, m in members.items()}
        else:
            raise FormatError(f"{what}: format {fmt!r} cannot be opened here")

    def _no_key(self, key):
        if key is not None:
            raise ArgumentError(f"key: {self.format} files hold a flat state dict; key= "
                                "only applies to torch checkpoints")

    @property
    def names(self):
        return list(self.refs)

    def info(self, name):
        ref = self.refs[name]
        if self.format in ("torch", "torch-legacy"):
            return ref.dtype.numpy, ref.shape
        if self.format == "safetensors":
            dt, shape, _b, _e = self.header.entries[name]
            return dt, shape
        dt, shape = npz.info(self.buf, ref, self.path)
        return (dt if dt.isnative else dt.newbyteorder("=")), tuple(shape)

    def array(self, name):
        ref = self.refs[name]
        if self.format == "torch":
            return self.tz.array(ref)
        if self.format == "torch-legacy":
            return self._legacy_array(ref)
        if self.format == "safetensors":
            return safetensors.array(self.f, self.buf, self.header, name, self.path)
        return npz.array_from(self.buf, ref, self.path)

    def _legacy_array(self, ref):
        st, dt = ref.storage, ref.dtype.numpy
        key = (st.key, dt.str)
        base = self._bases.get(key)
        if base is None:
            nbytes = st.numel * (1 if st.dtype is None else st.dtype.numpy.itemsize)
            file_dt = dt.newbyteorder(">") if self.lg.big_endian and dt.itemsize > 1 else dt
            base = np.frombuffer(self.buf, file_dt, nbytes // dt.itemsize, self.lg.data[st.key])
            if file_dt is not dt:
                base = base.astype(dt)
            self._bases[key] = base
        return torchzip.view_of(base, ref, self.path)

    def release(self, a):
        """Drop the pages of the memory map under array ``a`` from this process (the page
        cache keeps them; a later read faults them back in), so streaming a file larger
        than RAM does not grow the resident set."""
        buf = self.buf
        if not isinstance(buf, _mmap.mmap) or not hasattr(buf, "madvise") or a.nbytes == 0:
            return
        try:
            base = np.frombuffer(buf, np.uint8).ctypes.data
        except (TypeError, ValueError):
            return
        start = a.__array_interface__["data"][0] - base
        if not 0 <= start < len(buf):
            return                      # not a view of this map (a copy was made)
        page = _mmap.PAGESIZE
        lo = start // page * page
        hi = min(len(buf), start + a.nbytes)
        try:
            buf.madvise(_mmap.MADV_DONTNEED, lo, hi - lo)
        except (OSError, ValueError):  # pragma: no cover - platform without madvise
            pass

    def close(self):
        f, self.f = getattr(self, "f", None), None
        if f is not None:
            f.close()


class Checkpoint(Mapping):
    """A checkpoint open for reading: a read-only mapping name -> array, in file order.

    Values are memory-mapped (read-only) and made on access, one at a time, so a checkpoint
    larger than RAM can be processed tensor by tensor.  ``info(name)`` gives (dtype, shape)
    without touching the data; ``metadata`` is the safetensors ``__metadata__`` (or None);
    ``format`` the detected format.  Use as a context manager or call ``close()``.
    """

    def __init__(self, path, *, key=None, access=_mmap.ACCESS_READ):
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise ArgumentError(f"path: {self.path} does not exist")
        if os.path.isdir(self.path):
            self.path = shards.resolve_folder(self.path)
        self.format = _sniff(self.path)
        self._sources = []
        self._where = {}
        try:
            if self.format == "shards":
                index = shards.read_index(self.path)
                self.metadata = index.metadata
                by_file = {}
                for name, shard in index.weight_map.items():
                    src = by_file.get(shard)
                    if src is None:
                        spath = os.path.join(index.folder, shard)
                        if not os.path.isfile(spath):
                            raise FormatError(f"{index.path}: shard {shard} is missing")
                        src = by_file[shard] = _Source(spath, _sniff(spath), access, key)
                        self._sources.append(src)
                    if name not in src.refs:
                        raise FormatError(f"{index.path}: tensor {name!r} is not in shard "
                                          f"{shard}")
                    self._where[name] = src
            else:
                src = _Source(self.path, self.format, access, key)
                self._sources.append(src)
                self.format = src.format
                self.metadata = src.metadata
                self._where = {n: src for n in src.names}
        except BaseException:
            self.close()
            raise

    def __getitem__(self, name):
        try:
            src = self._where[name]
        except KeyError:
            raise KeyError(name) from None
        return src.array(name)

    def __iter__(self):
        return iter(self._where)

    def __len__(self):
        return len(self._where)

    def __contains__(self, name):
        return name in self._where

    def info(self, name):
        """(dtype, shape) of one tensor without reading its data."""
        return self._where[name].info(name)

    def release(self, name, array):
        """Drop from this process the mapped pages under ``array`` (a value of ``name``
        returned earlier); streaming code calls it when done with a tensor, so the resident
        set stays near one tensor.  A no-op for files that are not memory-mapped."""
        self._where[name].release(np.asarray(array))

    def close(self):
        for s in self._sources:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<litecomp.io.Checkpoint {self.path!r} ({self.format}, {len(self)} tensors)>"
