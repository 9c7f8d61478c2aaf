"""Checkpoint I/O without torch: ``load``, ``save`` and ``open`` for torch zip files
(.pth/.pt/.bin), legacy torch files, .safetensors, .npz and sharded checkpoints.

Reading never runs code from a file: torch pickles go through litecomp's allowlist
unpickler.  Writing goes through a temporary file renamed into place when complete.
"""

import json
import mmap as _mmap
import os

import numpy as np

from .. import dtypes as _ldt
from ..errors import ArgumentError, DTypeError
from . import dtypes as _dt
from . import npz as _npz
from . import safetensors as _st
from . import shards as _shards
from . import torchzip as _tz
from .atomic import AtomicFiles, atomic_write
from .checkpoint import FORMATS, Checkpoint, detect

# `open` is left out on purpose: a star import must not shadow the built-in open().
__all__ = ["load", "save", "detect", "Checkpoint", "FORMATS"]

_SUFFIX = {".safetensors": "safetensors", ".pth": "torch", ".pt": "torch", ".bin": "torch",
           ".ckpt": "torch", ".tar": "torch", ".npz": "npz"}
_WRITABLE = ("torch", "safetensors", "npz")


def load(path, *, mmap=True, key=None) -> dict:
    """Read a checkpoint into ``{name: numpy.ndarray}``, in file order.

    The format is recognised from the content: torch zip files (.pth/.pt/.bin from
    ``torch.save``), legacy pre-1.6 torch files, .safetensors, .npz, and a folder or
    ``*.index.json`` of shards.  ``mmap=True`` maps the file copy-on-write (arrays are
    writeable; the file is never modified); ``mmap=False`` reads everything into memory.
    ``key`` selects a nested entry such as ``{"model": state_dict, "epoch": 3}`` (a tuple
    of keys goes deeper).  Tensors that share storage in a torch file share memory here.
    """
    access = _mmap.ACCESS_COPY if mmap else None
    with Checkpoint(path, key=key, access=access) as ck:
        return {name: ck[name] for name in ck}


def open(path, *, key=None) -> Checkpoint:  # noqa: A001 - litecomp.open, by design
    """A lazy, read-only mapping of a checkpoint: values are memory-mapped arrays made on
    access, so huge files can be processed tensor by tensor.  See ``Checkpoint``."""
    return Checkpoint(path, key=key)


def save(state_dict, path, *, format=None, max_shard_size=None, metadata=None) -> str:
    """Write ``{name: array}`` to ``path``; returns the path to load it from.

    ``format`` is "torch" (what ``torch.save`` writes; ``torch.load(weights_only=True)``
    reads it), "safetensors" or "npz"; by default it follows the suffix (.pth/.pt/.bin ->
    torch).  Values may be NumPy arrays or (CPU) torch tensors.  ``max_shard_size`` (bytes,
    or "2GB"/"500MiB") writes HF-style shards beside ``path`` plus ``<name>.index.json``
    (a single file when everything fits).  ``metadata`` (str -> str) is stored in the
    safetensors header, or in the shard index.  The write is atomic: a temporary file is
    renamed into place only when complete, so the target is never left half-written.
    """
    path = os.fspath(path)
    fmt = _format_for(path, format)
    arrays = _arrays(state_dict, fmt)
    if metadata is not None:
        if not (isinstance(metadata, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
            raise ArgumentError("metadata: must be a dict of str -> str")
        if fmt != "safetensors" and max_shard_size is None:
            raise ArgumentError(f"metadata: the {fmt} format has no place for metadata; "
                                "use .safetensors")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArgumentError(f"path: folder {folder} does not exist")
    if max_shard_size is None:
        _write(arrays, path, fmt, metadata)
        return path
    limit = _shards.parse_size(max_shard_size)
    groups = _shards.plan(arrays, limit)
    if len(groups) == 1:
        with AtomicFiles() as group:
            _write(arrays, path, fmt, metadata if fmt == "safetensors" else None, group)
            group.on_commit.append(lambda: _shards.remove_stale(path, keep=[]))
        return path
    files, index_name = _shards.shard_names(path, len(groups))
    weight_map = {}
    index_path = os.path.join(folder, index_name)
    # Every shard and the index are written first and renamed together at the end (with
    # Ctrl-C held off): an interrupted save leaves the folder as it was.
    with AtomicFiles() as group:
        for names, fname in zip(groups, files):
            _write({n: arrays[n] for n in names}, os.path.join(folder, fname), fmt,
                   metadata if fmt == "safetensors" else None, group)
            weight_map.update(dict.fromkeys(names, fname))
        meta = {"total_size": sum(a.nbytes for a in arrays.values())}
        if metadata:
            meta.update(metadata)
        with group.open(index_path) as f:
            f.write(json.dumps({"metadata": meta, "weight_map": weight_map},
                               indent=2).encode())
        group.on_commit.append(lambda: _shards.remove_stale(path, keep=files))
    return index_path


def _write(arrays, path, fmt, metadata, group=None):
    with (group.open(path) if group is not None else atomic_write(path)) as f:
        if fmt == "torch":
            _tz.write(arrays, f, _tz.archive_name(path))
        elif fmt == "safetensors":
            _st.write(arrays, f, metadata)
        else:
            _npz.write(arrays, f)


def _format_for(path, format):
    if format is not None:
        if format not in _WRITABLE:
            raise ArgumentError(f"format: {format!r} is not one of {', '.join(_WRITABLE)}")
        return format
    ext = os.path.splitext(path)[1].lower()
    try:
        return _SUFFIX[ext]
    except KeyError:
        raise ArgumentError(f"path: cannot tell the format from suffix {ext!r}; use "
                            f".pth/.pt/.bin, .safetensors or .npz, or pass format=") from None


def _is_torch_tensor(v) -> bool:
    return type(v).__module__.split(".")[0] == "torch" and hasattr(v, "untyped_storage")


def _arrays(state_dict, fmt) -> dict:
    """{name: native-endian ndarray} from arrays / torch tensors; torch views of one
    storage become NumPy views of one base, so they are written once."""
    if not hasattr(state_dict, "items"):
        raise ArgumentError(f"state_dict: expected a dict of name -> array, got "
                            f"{type(state_dict).__name__}")
    out, torch_bases = {}, {}
    for name, v in state_dict.items():
        if type(name) is not str:
            raise ArgumentError(f"state_dict: keys must be str, got {name!r}")
        if _is_torch_tensor(v):
            try:
                a = _from_torch(v, torch_bases)
            except (RuntimeError, NotImplementedError) as exc:   # meta, sparse, ...
                raise ArgumentError(f"state_dict: tensor {name!r} cannot be saved: "
                                    f"{exc}") from None
        elif isinstance(v, (np.ndarray, np.generic)):
            a = np.asarray(v)
        else:
            raise ArgumentError(f"state_dict: value of {name!r} is a {type(v).__name__}, "
                                "not an array or tensor")
        if not a.dtype.isnative:
            a = a.astype(a.dtype.newbyteorder("="))
        dname = _ldt.name_of(a.dtype)
        ok = {"torch": _dt.TORCH, "safetensors": _dt.SAFETENSORS_OF}.get(fmt)
        if ok is not None and dname not in ok:
            raise DTypeError(f"state_dict: {name!r} has dtype {a.dtype}, which the {fmt} "
                             "format cannot store")
        if fmt == "npz" and (a.dtype.kind == "V" or a.dtype.hasobject
                             or dname in _ldt.FLOAT_DTYPES[4:] or dname == "bfloat16"):
            raise DTypeError(f"state_dict: {name!r} has dtype {a.dtype}; .npz cannot keep it "
                             "(use .safetensors or .pth)")
        out[name] = a
    return out


def _from_torch(t, bases):
    from ..torch import to_numpy
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    st = t.untyped_storage()
    key = (st.data_ptr(), t.dtype)
    base = bases.get(key)
    if base is None:
        whole = t.new_empty(0).set_(st, 0, (st.nbytes() // t.element_size(),), (1,))
        base = bases[key] = to_numpy(whole)
    if t.numel() == 0:
        return to_numpy(t)
    return _tz.strided_view(base, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
