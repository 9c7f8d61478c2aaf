"""The fuzz targets: one function per loader or parser, each taking the fuzzer's bytes.

A target feeds the bytes to litecomp the way a user's file would reach it and touches every
array it gets back.  The contract every target checks is the one every loader promises:
the outcome is a result or a ``litecomp.errors`` exception -- never another exception type,
a crash, a hang, or unbounded memory.  ``run_one`` applies it; fuzz/harness.py (atheris),
tests/test_fuzz_replay.py (the saved corpus, in the normal test suite) and the seed maker
all go through it.

Adding a target is one decorated function:

    @target("recipe", suffix=".yaml")
    def _recipe(data, tmp):
        litecomp.recipe.load(write(tmp, "r.yaml", data))

Seeds live in fuzz/seeds/<name>/ (made by fuzz/make_seeds.py from real files), crashes
and hangs the fuzzer found in fuzz/regressions/<name>/ (replayed by the test suite).
"""

import os
import zipfile
import zlib

import numpy as np

import litecomp
from litecomp.errors import LitecompError

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
REGRESSIONS = os.path.join(HERE, "regressions")

TARGETS = {}


class Target:
    def __init__(self, name, fn, doc):
        self.name, self.fn, self.doc = name, fn, doc

    def seed_dir(self):
        return os.path.join(SEEDS, self.name)

    def regression_dir(self):
        return os.path.join(REGRESSIONS, self.name)


def target(name):
    """Register ``fn(data: bytes, tmp: str)`` as the fuzz target ``name``; ``tmp`` is a
    private scratch folder the target may write into."""
    def deco(fn):
        TARGETS[name] = Target(name, fn, (fn.__doc__ or "").strip().splitlines()[0])
        return fn
    return deco


def run_one(t, data: bytes, tmp: str):
    """Feed ``data`` to target ``t``: returns "ok" or "error" (a litecomp error); any
    other exception propagates -- that is a bug."""
    try:
        t.fn(data, tmp)
    except LitecompError:
        return "error"
    return "ok"


# ------------------------------------------------------------------ helpers
def write(tmp, name, data):
    path = os.path.join(tmp, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def touch(arrays):
    """Read every array: its first and last element and a checksum of each distinct
    buffer, so a view past the end of its data, or lazily-reported damage, shows here.
    Broadcast views (zero strides) are legal and cost nothing; they are not expanded."""
    seen = set()
    for a in arrays.values():
        assert isinstance(a, np.ndarray), type(a)
        if a.size:
            a.flat[0], a.flat[-1]
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        if id(base) not in seen and base.flags.c_contiguous:
            seen.add(id(base))
            zlib.crc32(base.reshape(-1).view(np.uint8))


def load_all_ways(path, **kw):
    """litecomp.load mapped and read, and litecomp.open's lazy info()."""
    touch(litecomp.load(path, **kw))
    touch(litecomp.load(path, mmap=False, **kw))
    with litecomp.open(path, **kw) as ck:
        for name in ck:
            ck.info(name)


# ------------------------------------------------------------------ the targets
@target("torch")
def _torch(data, tmp):
    """torch zip checkpoints (.pth): zip directory, data.pkl through the allowlist
    unpickler, storages and views; the whole file is the input."""
    load_all_ways(write(tmp, "model.pth", data))


def torch_zip_bytes(pkl: bytes, storages: dict, compress=zipfile.ZIP_STORED) -> bytes:
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            z.writestr(f"archive/data/{key}", raw)
    return buf.getvalue()


# Storages every torch-pickle input can refer to: keys "0".."7" of 4096 bytes (torch numbers
# storages from 0, so real pickles find theirs), "8" of 7 bytes and "9" empty.
_STORAGES = {str(i): bytes(range(256)) * (n // 256) + bytes(range(n % 256))
             for i, n in enumerate((4096,) * 8 + (7, 0))}


@target("torch-pickle")
def _torch_pickle(data, tmp):
    """data.pkl of a torch zip (the zip itself is well formed, with storages "0".."9"):
    the pickle VM, persistent ids, storage sizes and tensor views past their storage."""
    load_all_ways(write(tmp, "model.pth", torch_zip_bytes(data, _STORAGES)))


@target("legacy")
def _legacy(data, tmp):
    """legacy (pre-1.6) torch files: a stream of pickles, then raw storages."""
    load_all_ways(write(tmp, "model.bin", data))


@target("safetensors")
def _safetensors(data, tmp):
    """.safetensors: header length, JSON header, dtypes, shapes and data offsets."""
    load_all_ways(write(tmp, "model.safetensors", data))


def npz_bytes(members: dict, compress=zipfile.ZIP_STORED) -> bytes:
    import io
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compress) as z:
        for name, raw in members.items():
            z.writestr(name, raw)
    return buf.getvalue()


@target("npz")
def _npz(data, tmp):
    """.npz: the whole file when it starts with a zip signature, else the bytes of one
    .npy member (stored when the first byte is even, deflated when odd) in a valid zip."""
    if data[:2] != b"PK":
        comp = zipfile.ZIP_DEFLATED if data[:1] and data[0] & 1 else zipfile.ZIP_STORED
        data = npz_bytes({"w.npy": data[1:]}, comp)
    load_all_ways(write(tmp, "arrays.npz", data))


_SHARD_DIR = "shards"


def _shard_folder(tmp):
    folder = os.path.join(tmp, _SHARD_DIR)
    if not os.path.isdir(folder):
        os.makedirs(folder)
        litecomp.save({"a": np.arange(6, dtype=np.float32).reshape(2, 3)},
                      os.path.join(folder, "model-00001-of-00002.safetensors"))
        litecomp.save({"b": np.ones(4, np.int8), "c": np.zeros(0, np.float16)},
                      os.path.join(folder, "model-00002-of-00002.safetensors"))
        os.makedirs(os.path.join(tmp, "outside"), exist_ok=True)
        litecomp.save({"secret": np.ones(2, np.float32)},
                      os.path.join(tmp, "outside", "secret.safetensors"))
    return folder


@target("shards")
def _shards(data, tmp):
    """model.safetensors.index.json beside two real shards (and a checkpoint outside the
    folder that the index must never reach): weight_map, shard names, metadata."""
    folder = _shard_folder(tmp)
    path = write(folder, "model.safetensors.index.json", data)
    out = litecomp.load(path)
    assert "secret" not in out, "the index reached a file outside its folder"
    touch(out)
    touch(litecomp.load(folder))


_GGUF_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q6_K")


@target("gguf")
def _gguf(data, tmp):
    """GGUF blocks: the first byte picks the type (Q4_0 .. Q6_K), the second the row count;
    the rest are the packed blocks litecomp.quant.gguf.dequantize reads."""
    from litecomp.quant import gguf
    if len(data) < 2:
        return
    qtype = _GGUF_TYPES[data[0] % len(_GGUF_TYPES)]
    rows = data[1] % 4 + 1
    raw = np.frombuffer(data[2:], np.uint8)
    raw = raw[: len(raw) // rows * rows].reshape(rows, -1)
    out = gguf.dequantize(raw, qtype)
    assert out.dtype == np.float32 and out.shape[0] == rows


_RECIPE_SD = {"fc.weight": np.linspace(-1, 1, 64 * 32, dtype=np.float32).reshape(64, 32),
              "fc.bias": np.zeros(64, np.float32),
              "emb.weight": np.linspace(-2, 2, 16 * 64, dtype=np.float32).reshape(16, 64)}


@target("recipe")
def _recipe(data, tmp):
    """recipe files (litecomp.recipe): JSON, or YAML when the first byte is odd; the stages
    are checked, then run on a small state dict by their family (prune or quant)."""
    from litecomp import recipe
    from litecomp.prune import state as prune_state
    from litecomp.quant import state as quant_state
    suffix = ".yaml" if data[:1] and data[0] & 1 else ".json"
    stages = recipe.stages(write(tmp, "recipe" + suffix, data[1:]))
    for fam, run in (("prune", prune_state.prune_state_dict),
                     ("quant", quant_state.quantize_state_dict)):
        mine = [s for s in stages if s.family == fam]
        if mine:
            out, _info = run(_RECIPE_SD, mine)
            touch({k: v for k, v in out.items() if isinstance(v, np.ndarray)})


def names():
    return sorted(TARGETS)


__all__ = ["TARGETS", "Target", "target", "run_one", "names"]
