"""Hugging Face style sharded checkpoints: ``model-00001-of-00003.safetensors`` (or
``pytorch_model-00001-of-00003.bin``) plus ``<name>.index.json`` =
{"metadata": {"total_size": N}, "weight_map": {tensor name: shard file}}."""

import glob
import json
import os
import re
from dataclasses import dataclass

from ..errors import ArgumentError, FormatError
from .files import open_regular

MAX_INDEX = 100_000_000
_UNITS = {"": 1, "B": 1, "KB": 10 ** 3, "MB": 10 ** 6, "GB": 10 ** 9, "TB": 10 ** 12,
          "KIB": 2 ** 10, "MIB": 2 ** 20, "GIB": 2 ** 30, "TIB": 2 ** 40}


def parse_size(size) -> int:
    """5_000_000, "5MB" (10**6) or "5MiB" (2**20) -> bytes, as transformers reads it."""
    if isinstance(size, int) and not isinstance(size, bool):
        n = size
    elif isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
        if not m:
            raise ArgumentError(f"max_shard_size: cannot read {size!r}; use bytes or e.g. "
                                "'2GB' / '500MiB'")
        n = int(float(m.group(1)) * _UNITS[m.group(2)])
    else:
        raise ArgumentError(f"max_shard_size: expected an int or a string like '2GB', got "
                            f"{type(size).__name__}")
    if n <= 0:
        raise ArgumentError(f"max_shard_size: must be positive, got {size!r}")
    return n


def plan(arrays: dict, max_bytes: int):
    """Split names into shards in order, starting a new shard when the next tensor would
    push the current one past max_bytes (a tensor bigger than that gets its own)."""
    out, cur, size = [], [], 0
    for name, a in arrays.items():
        if cur and size + a.nbytes > max_bytes:
            out.append(cur)
            cur, size = [], 0
        cur.append(name)
        size += a.nbytes
    if cur or not out:
        out.append(cur)
    return out


def shard_names(path, count):
    """(shard file names, index file name) for a target like dir/model.safetensors."""
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    files = [f"{stem}-{i:05d}-of-{count:05d}{ext}" for i in range(1, count + 1)]
    return files, base + ".index.json"


def remove_stale(path, keep):
    """Remove shards of an earlier save to the same name that the new one did not write
    (and its index when the new save is a single file), so a folder never mixes two."""
    folder = os.path.dirname(os.path.abspath(path))
    stem, ext = os.path.splitext(os.path.basename(path))
    pattern = re.compile(re.escape(stem) + r"-\d{5}-of-\d{5}" + re.escape(ext))
    for name in os.listdir(folder):
        if pattern.fullmatch(name) and name not in keep:
            os.remove(os.path.join(folder, name))
    if not keep:
        index = os.path.join(folder, os.path.basename(path) + ".index.json")
        if os.path.exists(index):
            os.remove(index)


@dataclass
class Index:
    path: str
    folder: str
    weight_map: dict
    metadata: dict


CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def resolve_folder(folder) -> str:
    """The file to read for a folder: its one ``*.index.json``, or else its one checkpoint
    file (a model saved unsharded)."""
    found = sorted(glob.glob(os.path.join(glob.escape(folder), "*.index.json")))
    if len(found) == 1:
        return found[0]
    if found:
        raise FormatError(f"{folder}: a sharded checkpoint folder needs exactly one "
                          f"*.index.json, found {len(found)} "
                          f"({', '.join(map(os.path.basename, found))})")
    files = sorted(f for f in os.listdir(folder) if f.endswith(CHECKPOINT_SUFFIXES)
                   and os.path.isfile(os.path.join(folder, f)))
    if len(files) != 1:
        raise FormatError(f"{folder}: no *.index.json, and {len(files)} checkpoint files "
                          f"({', '.join(files) or 'none'}); name the file to load")
    return os.path.join(folder, files[0])


def read_index(path) -> Index:
    path = os.fspath(path)
    try:
        with open_regular(path) as f:
            if os.fstat(f.fileno()).st_size > MAX_INDEX:
                raise FormatError(f"{path}: shard index larger than {MAX_INDEX} bytes")
            index = json.loads(f.read(MAX_INDEX + 1).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{path}: shard index is not valid JSON ({exc})") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
        raise FormatError(f"{path}: shard index has no weight_map of name -> file")
    for shard in set(wm.values()):
        # A shard must sit beside the index: no paths, so no reads outside the folder.
        if os.path.basename(shard) != shard or shard in ("", ".", ".."):
            raise FormatError(f"{path}: shard file name {shard!r} is not a plain file name")
    meta = index.get("metadata")
    return Index(path, os.path.dirname(os.path.abspath(path)), wm,
                 meta if isinstance(meta, dict) else {})
