"""Writing a checkpoint one tensor at a time: ``StreamWriter`` keeps only the tensor being
added in memory, so a model larger than RAM can be written as it is produced.

safetensors needs its header (every name, dtype, shape and offset) before the data, so each
tensor's bytes go to a temporary data file as they come; when a shard is full (or at the
end) its header is written to the shard's temporary file and the data copied after it by
the kernel (``os.copy_file_range`` / ``sendfile``, no user-space buffer).  Nothing appears
at the target names until ``close()`` succeeds: shards and the index are renamed into place
at the end, and an error or interruption removes every temporary file.

>>> import os, tempfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> with StreamWriter(os.path.join(folder, "m.safetensors")) as w:
...     w.add("a", np.arange(4, dtype=np.float32))
...     w.add("b", np.ones((2, 2), np.int8))
>>> import litecomp
>>> sorted(litecomp.load(os.path.join(folder, "m.safetensors")))
['a', 'b']
"""

import contextlib
import json
import os
import struct
import tempfile

import numpy as np

from ..errors import ArgumentError, DTypeError
from . import dtypes as _dt
from .. import dtypes as _ldt
from . import shards as _shards
from .atomic import _umask

__all__ = ["StreamWriter"]


def _copy_range(src, dst, n):
    """Append n bytes of file src (from its start) to file dst, in the kernel when it can."""
    src.flush()
    dst.flush()
    off = 0
    copy = getattr(os, "copy_file_range", None)
    while off < n:
        try:
            if copy is not None:
                done = copy(src.fileno(), dst.fileno(), n - off, off)
            else:
                done = os.sendfile(dst.fileno(), src.fileno(), off, n - off)
        except OSError:  # another filesystem, or no kernel copy: a plain chunked copy
            copy = None
            src.seek(off)
            done = dst.write(src.read(min(n - off, 64 << 20)))
        if not done:
            raise OSError("copy of tensor data stopped early")
        off += done
    dst.seek(0, os.SEEK_END)


class _Shard:
    def __init__(self, folder, final):
        self.final = final
        fd, self.tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(final)}.",
                                        suffix=".tmp")
        self.out = os.fdopen(fd, "w+b")
        self.data = tempfile.TemporaryFile(dir=folder)
        self.entries = {}   # name -> (dtype, shape, begin, end), in add order
        self.size = 0

    def add(self, name, a):
        begin = self.size
        if a.size:
            self.data.write(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
        self.size += a.nbytes
        self.entries[name] = (_dt.SAFETENSORS_OF[_ldt.name_of(a.dtype)], list(a.shape), begin,
                              self.size)

    def finish(self, metadata, fsync):
        header = {}
        if metadata:
            header["__metadata__"] = dict(metadata)
        for name, (dt, shape, b, e) in self.entries.items():
            header[name] = {"dtype": dt, "shape": shape, "data_offsets": [b, e]}
        js = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        js += b" " * (-len(js) % 8)
        self.out.write(struct.pack("<Q", len(js)) + js)
        _copy_range(self.data, self.out, self.size)
        self.data.close()
        self.out.flush()
        if fsync:
            os.fsync(self.out.fileno())
        self.out.close()
        os.chmod(self.tmp, 0o666 & ~_umask())

    def discard(self):
        for f in (self.out, self.data):
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


class StreamWriter:
    """A safetensors file (or HF-style shards plus ``<name>.index.json`` when
    ``max_shard_size`` is given and exceeded) written one tensor at a time.

    ``add(name, array)`` writes the tensor's bytes at once and keeps nothing of it;
    ``close()`` (or leaving the ``with`` block without an error) puts the files in place;
    an exception inside the block, or ``abort()``, leaves no file behind and an earlier file
    at the target untouched.  ``metadata`` (str -> str) goes in every shard's header.
    """

    def __init__(self, path, *, max_shard_size=None, metadata=None, fsync=True):
        self.path = os.fspath(path)
        self.folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(self.folder):
            raise ArgumentError(f"path: folder {self.folder} does not exist")
        if not self.path.endswith(".safetensors"):
            raise ArgumentError(f"path: {self.path!r}: streamed checkpoints are .safetensors")
        if metadata is not None and not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise ArgumentError("metadata: must be a dict of str -> str")
        self.limit = None if max_shard_size is None else _shards.parse_size(max_shard_size)
        self.metadata = metadata
        self.fsync = fsync
        self.shards = []
        self.names = set()
        self.total = 0
        self.closed = False

    def add(self, name, array):
        if self.closed:
            raise ArgumentError("StreamWriter: already closed")
        if type(name) is not str:
            raise ArgumentError(f"name: must be a str, got {name!r}")
        if name in self.names:
            raise ArgumentError(f"name: {name!r} was already written")
        a = np.asarray(array)
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        if _ldt.name_of(a.dtype) not in _dt.SAFETENSORS_OF:
            raise DTypeError(f"{name}: dtype {a.dtype} cannot be stored in safetensors")
        cur = self.shards[-1] if self.shards else None
        if cur is None or (self.limit is not None and cur.entries
                           and cur.size + a.nbytes > self.limit):
            if cur is not None:
                cur.finish(self.metadata, self.fsync)   # done: its data file goes away
            cur = _Shard(self.folder, self.path)
            self.shards.append(cur)
        cur.add(name, a)
        self.names.add(name)
        self.total += a.nbytes

    def close(self) -> str:
        """Finish and rename the files into place; returns the path to load."""
        if self.closed:
            return self._result
        try:
            if not self.shards:
                self.shards.append(_Shard(self.folder, self.path))
            self.shards[-1].finish(self.metadata, self.fsync)
            if len(self.shards) == 1:
                os.replace(self.shards[0].tmp, self.path)
                _shards.remove_stale(self.path, keep=[])
                self._result = self.path
            else:
                files, index_name = _shards.shard_names(self.path, len(self.shards))
                weight_map = {}
                for shard, fname in zip(self.shards, files):
                    weight_map.update(dict.fromkeys(shard.entries, fname))
                meta = {"total_size": self.total, **(self.metadata or {})}
                index_path = os.path.join(self.folder, index_name)
                from .atomic import atomic_write
                for shard, fname in zip(self.shards, files):
                    os.replace(shard.tmp, os.path.join(self.folder, fname))
                with atomic_write(index_path) as f:
                    f.write(json.dumps({"metadata": meta, "weight_map": weight_map},
                                       indent=2).encode())
                _shards.remove_stale(self.path, keep=files)
                self._result = index_path
        except BaseException:
            self.abort()
            raise
        self.closed = True
        return self._result

    def abort(self):
        """Remove every temporary file; nothing is written at the target."""
        for s in self.shards:
            s.discard()
        self.shards = []
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
