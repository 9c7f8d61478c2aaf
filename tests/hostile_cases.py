"""Hostile inputs with a stated bound: each case builds a file (or folder) and opens it;
the outcome must be the stated litecomp error (or a result, where the file is legal) within
BOUND_CPU_S of CPU time and BOUND_MB of peak memory.  tests/test_hostile_bounds.py checks
every case; ``python tests/hostile_cases.py`` prints the table in docs/reliability.md.

Peak memory is the growth of the process's peak RSS (benchmarks.harness.run_with_peak:
VmHWM, reset per case through /proc/self/clear_refs), so it counts NumPy buffers, Python
objects and touched file maps alike."""

import io
import json
import os
import pickle
import struct
import sys
import time
import zipfile
import zlib

import numpy as np

import litecomp
from litecomp.errors import FormatError, UnsafeCheckpointError
from litecomp.io.unpickler import PickleWriter

BOUND_CPU_S = 1.0
BOUND_MB = 100
CASES = []


def case(title, expect):
    """Register ``build(tmp) -> thunk``; ``expect`` is an exception class or "result"."""
    def deco(build):
        CASES.append((build.__name__.lstrip("_"), title, expect, build))
        return build
    return deco


def _zip(path, members, compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _tensor_pkl(numel, shape=(4,), strides=(1,), key="0"):
    pw = PickleWriter()
    pw.dict_([("w", lambda: pw.tensor("float32", key, numel, 0, shape, strides))])
    return pw.finish()


def _load(path, **kw):
    return lambda: litecomp.load(path, **kw)


# ------------------------------------------------------------------ sizes that lie
@case("safetensors header length field claims 2**63 bytes", FormatError)
def _st_header_claims(tmp):
    p = os.path.join(tmp, "h.safetensors")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", 2 ** 63) + b"{}")
    return _load(p)


@case("safetensors tensor claims 4 TB (shape [2**20]*2 F32, offsets to match)", FormatError)
def _st_tensor_claims(tmp):
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [2 ** 20, 2 ** 20],
                            "data_offsets": [0, 4 * 2 ** 40]}}).encode()
    p = os.path.join(tmp, "t.safetensors")
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(hdr)) + hdr + bytes(16))
    return _load(p)


@case("torch storage record: zip directory claims 4 GB", FormatError)
def _torch_record_claims(tmp):
    p = _zip(os.path.join(tmp, "big.pth"), {"a/data.pkl": _tensor_pkl(4),
                                             "a/data/0": bytes(16)})
    raw = bytearray(open(p, "rb").read())
    for pos in [i for i in range(len(raw)) if raw[i:i + 4] == b"PK\x01\x02"]:
        struct.pack_into("<II", raw, pos + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    open(p, "wb").write(bytes(raw))
    return _load(p)


@case("torch tensor of shape (2**40, 2**40) on a 16-byte storage", FormatError)
def _torch_shape_claims(tmp):
    p = _zip(os.path.join(tmp, "s.pth"), {"a/data.pkl": _tensor_pkl(
        4, shape=(2 ** 40, 2 ** 40), strides=(1, 1)), "a/data/0": bytes(16)})
    return _load(p)


@case("torch storage numel 2**62 in the pickle", FormatError)
def _torch_numel_claims(tmp):
    p = _zip(os.path.join(tmp, "n.pth"), {"a/data.pkl": _tensor_pkl(2 ** 62),
                                           "a/data/0": bytes(16)})
    return _load(p)


@case("legacy torch file: storage claims 2**60 elements", FormatError)
def _legacy_claims(tmp):
    from litecomp.io import legacy
    body = (pickle.dumps(legacy.MAGIC, protocol=2) + pickle.dumps(legacy.PROTOCOL, protocol=2)
            + pickle.dumps({"little_endian": True}, protocol=2) + _tensor_pkl(4)
            + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 2 ** 60) + bytes(16))
    p = os.path.join(tmp, "l.bin")
    open(p, "wb").write(body)
    return _load(p)


@case(".npz member: .npy header claims shape (2**40,) float64", FormatError)
def _npy_claims(tmp):
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": "<f8", "fortran_order": False,
                                             "shape": (2 ** 40,)})
    return _load(_zip(os.path.join(tmp, "c.npz"), {"w.npy": h.getvalue() + bytes(64)}))


# ------------------------------------------------------------------ zip bombs
@case("zip bomb: deflated data.pkl declares 4 GB (ratio > 1032:1)", FormatError)
def _bomb_ratio(tmp):
    p = _zip(os.path.join(tmp, "bomb.pth"), {"a/data.pkl": _tensor_pkl(4),
                                              "a/data/0": bytes(16)}, zipfile.ZIP_DEFLATED)
    raw = bytearray(open(p, "rb").read())
    cd = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, cd + 24, 0xFFFFFFF0)
    open(p, "wb").write(bytes(raw))
    return _load(p)


@case("zip bomb: data.pkl declares 1 KB, inflates to 64 MB", FormatError)
def _bomb_understated(tmp):
    p = _zip(os.path.join(tmp, "under.pth"), {"a/data.pkl": bytes(64 << 20)},
             zipfile.ZIP_DEFLATED)
    raw = bytearray(open(p, "rb").read())
    for pos in [i for i in range(len(raw)) if raw[i:i + 4] == b"PK\x01\x02"]:
        struct.pack_into("<I", raw, pos + 24, 1024)
    open(p, "wb").write(bytes(raw))
    return _load(p)


@case("zip bomb: 1000 directory entries share one deflated stream (overlapping members)",
      FormatError)
def _bomb_overlap(tmp):
    data = zlib.compress(bytes(1 << 20), 9)[2:-4]          # raw deflate of 1 MiB zeros
    crc = zlib.crc32(bytes(1 << 20))
    name = b"a/data.pkl"
    local = struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0, crc, len(data),
                        1 << 20, len(name), 0) + name
    body = local + data
    cd = b""
    for i in range(1000):
        n = name if i == 0 else f"a/data/{i}".encode()
        cd += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, crc,
                          len(data), 1 << 20, len(n), 0, 0, 0, 0, 0, 0) + n
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1000, 1000, len(cd), len(body), 0)
    p = os.path.join(tmp, "overlap.pth")
    open(p, "wb").write(body + cd + eocd)
    return _load(p)


@case("deflated data.pkl of 64 MiB zeros (a 64 KB file): over the 16 MiB pickle limit",
      FormatError)
def _bomb_big_pickle(tmp):
    return _load(_zip(os.path.join(tmp, "zeros.pth"), {"a/data.pkl": bytes(64 << 20)},
                      zipfile.ZIP_DEFLATED))


@case("deflated data.pkl of 16 MiB zeros (a 16 KB file): inflates within the limit, "
      "then fails", UnsafeCheckpointError)
def _bomb_honest_pickle(tmp):
    return _load(_zip(os.path.join(tmp, "zeros16.pth"), {"a/data.pkl": bytes(16 << 20)},
                      zipfile.ZIP_DEFLATED))


@case("npz: a deflated member that inflates to 1 GB -- only open().info(), which reads "
      "its header", "result")
def _npz_honest_bomb_info(tmp):
    h = io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": "<f4", "fortran_order": False,
                                             "shape": (1 << 28,)})
    p = os.path.join(tmp, "big.npz")
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("w.npy", "w", force_zip64=True) as f:
            f.write(h.getvalue())
            chunk = bytes(1 << 24)
            for _ in range(64):
                f.write(chunk)

    def thunk():
        with litecomp.open(p) as ck:
            return ck.info("w")
    return thunk


# ------------------------------------------------------------------ pickles
def _torch_with(tmp, name, pkl):
    return _load(_zip(os.path.join(tmp, f"{name}.pth"), {"a/data.pkl": pkl}))


@case("pickle: 300k nested tuples as a dict key", FormatError)
def _deep_tuple_key(tmp):
    return _torch_with(tmp, "deep-key", b"\x80\x02}" + b"N" + b"\x85" * 300000 + b"Ns.")


@case("pickle: 300k nested tuples as a value", FormatError)
def _deep_tuple_value(tmp):
    return _torch_with(tmp, "deep-val", b"\x80\x02}X\x01\x00\x00\x00wN" + b"\x85" * 300000
                       + b"s.")


@case("pickle: 100k nested lists", FormatError)
def _deep_list(tmp):
    return _torch_with(tmp, "deep-list", b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b".")


@case("pickle: 1M nested MARKs", FormatError)
def _deep_marks(tmp):
    return _torch_with(tmp, "marks", b"\x80\x02" + b"(" * (1 << 20) + b"N.")


@case("pickle: a list that contains itself, as a tensor's value", FormatError)
def _cyclic_list(tmp):
    return _torch_with(tmp, "cyc-list", b"\x80\x02}X\x01\x00\x00\x00w]q\x00h\x00as.")


@case("pickle: a dict that contains itself, followed with key=('a',)*1000", FormatError)
def _cyclic_dict(tmp):
    p = _zip(os.path.join(tmp, "cyc-dict.pth"),
             {"a/data.pkl": b"\x80\x02}q\x00X\x01\x00\x00\x00ah\x00s."})
    return _load(p, key=("a",) * 1000)


@case("pickle: 4M EMPTY_SETs (deflated: a 4 KB file)", FormatError)
def _set_bomb(tmp):
    return _load(_zip(os.path.join(tmp, "sets.pth"),
                      {"a/data.pkl": b"\x80\x02" + b"\x8f" * (4 << 20)}, zipfile.ZIP_DEFLATED))


@case("pickle: 4M memo slots (MEMOIZE)", FormatError)
def _memo_bomb(tmp):
    return _load(_zip(os.path.join(tmp, "memo.pth"),
                      {"a/data.pkl": b"\x80\x04N" + b"\x94" * (4 << 20)}, zipfile.ZIP_DEFLATED))


@case("pickle: bytearray(2**31 - 1) (a memory bomb through an allowlisted name)",
      FormatError)
def _bytearray_bomb(tmp):
    return _torch_with(tmp, "ba", b"\x80\x02cbuiltins\nbytearray\nJ\xff\xff\xff\x7f\x85R.")


@case("pickle: os.system in a state dict", UnsafeCheckpointError)
def _code_exec(tmp):
    return _torch_with(tmp, "evil", b"\x80\x02}X\x01\x00\x00\x00wcos\nsystem\nX\x04\x00\x00"
                       b"\x00true\x85Rs.")


@case("safetensors: header of 1 MB of '[' (JSON nesting)", FormatError)
def _st_deep_json(tmp):
    hdr = b"[" * (1 << 20)
    p = os.path.join(tmp, "deep.safetensors")
    open(p, "wb").write(struct.pack("<Q", len(hdr)) + hdr)
    return _load(p)


# ------------------------------------------------------------------ paths
def _shard_dir(tmp, name, weight_map):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    litecomp.save({"a": np.ones(2, np.float32)}, os.path.join(d, "real.safetensors"))
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"weight_map": weight_map}, f)
    return d


@case("shard index points outside its folder (../outside.safetensors)", FormatError)
def _shard_dotdot(tmp):
    litecomp.save({"s": np.ones(2, np.float32)}, os.path.join(tmp, "outside.safetensors"))
    return _load(_shard_dir(tmp, "dotdot", {"s": "../outside.safetensors"}))


@case("shard index names an absolute path (/etc/passwd)", FormatError)
def _shard_absolute(tmp):
    return _load(_shard_dir(tmp, "abs", {"s": "/etc/passwd"}))


@case("shard index: a name with a NUL byte", FormatError)
def _shard_nul(tmp):
    return _load(_shard_dir(tmp, "nul", {"s": "real.safetensors\x00x"}))


@case("shard is a symlink to /dev/zero (a device: never ends)", FormatError)
def _shard_dev_zero(tmp):
    d = _shard_dir(tmp, "devzero", {"a": "real.safetensors", "z": "z.safetensors"})
    os.symlink("/dev/zero", os.path.join(d, "z.safetensors"))
    return _load(d)


@case("shard is a FIFO (open() would block forever)", FormatError)
def _shard_fifo(tmp):
    d = _shard_dir(tmp, "fifo", {"a": "real.safetensors", "f": "f.safetensors"})
    os.mkfifo(os.path.join(d, "f.safetensors"))
    return _load(d)


@case("checkpoint path is a symlink to a FIFO", FormatError)
def _path_fifo(tmp):
    os.mkfifo(os.path.join(tmp, "pipe"))
    os.symlink(os.path.join(tmp, "pipe"), os.path.join(tmp, "pipe.pth"))
    return _load(os.path.join(tmp, "pipe.pth"))


@case("shard is a dangling symlink", FormatError)
def _shard_dangling(tmp):
    d = _shard_dir(tmp, "dangling", {"a": "real.safetensors", "g": "gone.safetensors"})
    os.symlink(os.path.join(tmp, "nowhere"), os.path.join(d, "gone.safetensors"))
    return _load(d)


@case("shard is a symlink loop", FormatError)
def _shard_loop(tmp):
    d = _shard_dir(tmp, "loop", {"a": "real.safetensors", "l": "l.safetensors"})
    os.symlink("l.safetensors", os.path.join(d, "l.safetensors"))
    return _load(d)


@case("shard is a symlink to a regular file elsewhere (the Hugging Face cache layout)",
      "result")
def _shard_symlink_ok(tmp):
    blobs = os.path.join(tmp, "blobs")
    os.makedirs(blobs)
    litecomp.save({"b": np.ones(2, np.float32)}, os.path.join(blobs, "sha256-x"),
                  format="safetensors")
    d = _shard_dir(tmp, "hfcache", {"a": "real.safetensors", "b": "b.safetensors"})
    os.symlink(os.path.join(blobs, "sha256-x"), os.path.join(d, "b.safetensors"))
    return _load(d)


@case("torch zip whose members are named ../../a/data.pkl (names are never used as paths)",
      "result")
def _zip_dotdot_names(tmp):
    return _load(_zip(os.path.join(tmp, "slip.pth"), {
        "../../a/data.pkl": _tensor_pkl(4), "../../a/data/0": bytes(16)}))


@case("checkpoint path is a folder with two index files", FormatError)
def _two_indexes(tmp):
    d = _shard_dir(tmp, "two", {"a": "real.safetensors"})
    with open(os.path.join(d, "other.safetensors.index.json"), "w") as f:
        f.write("{}")
    return _load(d)


# ------------------------------------------------------------------ measuring
def measure(build, tmp):
    """(outcome, exception-or-None, wall s, cpu s, peak MB above the start)."""
    from benchmarks.harness import run_with_peak
    thunk = build(tmp)
    box = {}

    def run():
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            thunk()
            box["outcome"] = "result"
        except Exception as e:            # noqa: BLE001 - the caller judges it
            box["exc"], box["outcome"] = e, type(e).__name__
        box["wall"], box["cpu"] = time.perf_counter() - t0, time.process_time() - c0

    peak, _ = run_with_peak(run)
    return (box["outcome"], box.get("exc"), box["wall"], box["cpu"],
            (peak or 0) / (1 << 20))


def table():
    import shutil
    import tempfile
    rows = ["| case | outcome | wall (ms) | CPU (ms) | peak memory (MB) |",
            "|---|---|---:|---:|---:|"]
    for name, title, expect, build in CASES:
        tmp = tempfile.mkdtemp(prefix=f"hostile-{name}-")
        try:
            outcome, exc, wall, cpu, peak = measure(build, tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append(f"| {title} | {outcome} | {wall * 1000:.0f} | {cpu * 1000:.0f} | "
                    f"{peak:.1f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.stdout.write(table() + "\n")
