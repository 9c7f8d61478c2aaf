"""Hostile and broken files: nothing outside the allowlist is imported or called, and
every malformed file raises a litecomp error (never a crash, never another exception)."""

import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np
import pytest

import litecomp
from litecomp.errors import FormatError, LitecompError, UnsafeCheckpointError
from litecomp.io.unpickler import PickleWriter


def torch_zip(path, pkl, records=(), compress=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression=compress) as z:
        z.writestr("archive/data.pkl", pkl)
        for name, data in dict(records).items():
            z.writestr(f"archive/data/{name}", data)
    return path


class Reduce:
    """Pickles as ``func(*args)``: the classic code-execution payload."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker):
    import subprocess
    cmd = f"touch {marker}"
    evil = [
        ("posix.system", Reduce(os.system, cmd), 2),
        ("posix.system", Reduce(os.system, cmd), 4),            # STACK_GLOBAL
        ("builtins.eval", Reduce(eval, f"open({str(marker)!r}, 'w')"), 2),
        ("builtins.exec", Reduce(exec, f"open({str(marker)!r}, 'w')"), 4),
        ("subprocess.check_call", Reduce(subprocess.check_call, ["touch", str(marker)]), 2),
        ("subprocess.Popen", Reduce(subprocess.Popen, ["touch", str(marker)]), 4),
    ]
    for name, obj, proto in evil:
        # hidden inside an otherwise normal state dict
        yield name, pickle.dumps({"w": obj}, protocol=proto)
    # handcrafted: GLOBAL of a module that must never even be imported, and INST
    yield "litecomp_evil_module.run", (b"\x80\x02clitecomp_evil_module\nrun\nX\x01\x00\x00\x00x"
                                       b"\x85R.")
    yield "os.system", b"cos\nsystem\n(S'touch x'\ntR."
    yield "subprocess", b"(X\x05\x00\x00\x00touchisubprocess\nPopen\n."


@pytest.mark.parametrize("container", ["zip", "deflated-zip", "legacy"])
def test_code_execution_payloads_are_refused(tmp_path, container):
    marker = tmp_path / "pwned"
    for i, (name, pkl) in enumerate(payloads(marker)):
        path = tmp_path / f"evil{i}.pth"
        if container == "legacy":
            from litecomp.io import legacy
            path.write_bytes(pickle.dumps(legacy.MAGIC, protocol=2)
                             + pickle.dumps(legacy.PROTOCOL, protocol=2)
                             + pickle.dumps({"little_endian": True}, protocol=2) + pkl)
        else:
            torch_zip(path, pkl, compress=zipfile.ZIP_DEFLATED if "deflated" in container
                      else zipfile.ZIP_STORED)
        with pytest.raises(UnsafeCheckpointError, match=name.split(".")[0]):
            litecomp.load(path)
        with pytest.raises(UnsafeCheckpointError):
            litecomp.open(path)
    assert not marker.exists()
    assert "litecomp_evil_module" not in sys.modules


def test_allowlisted_names_cannot_be_abused(tmp_path):
    cases = {
        # REDUCE on a dtype marker (allowlisted but not callable)
        "dtype": b"\x80\x02ctorch\nfloat32\n)R.",
        # BUILD on a set (only dicts and tensors take state)
        "build": b"\x80\x02cbuiltins\nset\n)R}b.",
        # NEWOBJ of something that is not a plain container
        "newobj": b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81.",
        # an unknown opcode (EXT1 reaches copyreg's registry in the stdlib unpickler)
        "ext": b"\x80\x02\x82\x01.",
    }
    for name, pkl in cases.items():
        with pytest.raises(UnsafeCheckpointError):
            litecomp.load(torch_zip(tmp_path / f"{name}.pth", pkl))


def _tensor_pickle(numel, offset=0, shape=(4,), strides=(1,), key="0"):
    pw = PickleWriter()
    pw.dict_([("w", lambda: pw.tensor("float32", key, numel, offset, shape, strides))])
    return pw.finish()


def test_bad_persistent_ids_and_storages(tmp_path):
    good = np.arange(4, dtype=np.float32).tobytes()
    ok = torch_zip(tmp_path / "ok.pth", _tensor_pickle(4), {"0": good})
    np.testing.assert_array_equal(litecomp.load(ok)["w"], np.arange(4, dtype=np.float32))
    bad = {
        "pid-string": (b"\x80\x02}X\x01\x00\x00\x00wX\x03\x00\x00\x00abcQs.", {}),
        "pid-module": (b"\x80\x02}X\x01\x00\x00\x00w(X\x06\x00\x00\x00moduleK\x01tQs.", {}),
        "missing-key": (_tensor_pickle(4, key="7"), {"0": good}),
        "record-too-short": (_tensor_pickle(4), {"0": good[:8]}),
        "absurd-numel": (_tensor_pickle(2 ** 62), {"0": good}),
        "offset-outside": (_tensor_pickle(4, offset=3), {"0": good}),
        "stride-outside": (_tensor_pickle(4, shape=(2, 2), strides=(3, 1)), {"0": good}),
        "huge-shape": (_tensor_pickle(4, shape=(2 ** 40, 2 ** 40), strides=(1, 1)),
                       {"0": good}),
        "huge-broadcast": (_tensor_pickle(4, shape=(2 ** 40, 2 ** 40), strides=(0, 0)),
                           {"0": good}),
        "negative-size": (_tensor_pickle(4, shape=(-1,), strides=(1,)), {"0": good}),
        "truncated-pickle": (_tensor_pickle(4)[:-9], {"0": good}),
        "long4": (b"\x80\x02\x8b\xff\xff\xff\x7f.", {}),
        "not-a-dict": (b"\x80\x02]q\x00.", {}),
        "stack-underflow": (b"\x80\x02R.", {}),
        "bad-memo": (b"\x80\x02h\x05.", {}),
    }
    for name, (pkl, records) in bad.items():
        with pytest.raises(FormatError):
            litecomp.load(torch_zip(tmp_path / f"{name}.pth", pkl, records))


def test_truncated_and_corrupted_files(tmp_path):
    sd = {"a": np.arange(100, dtype=np.float32), "b": np.ones((3, 4), np.int8)}
    for suffix in (".pth", ".safetensors", ".npz"):
        src = tmp_path / f"src{suffix}"
        litecomp.save(sd, src)
        data = src.read_bytes()
        cut_points = sorted(set(np.linspace(0, len(data) - 1, 40).astype(int)))
        for cut in cut_points:
            p = tmp_path / f"cut{suffix}"
            p.write_bytes(data[:cut])
            with pytest.raises(LitecompError):
                litecomp.load(p)
        rng = np.random.default_rng(1)
        for trial in range(40):          # flipped bytes: a clear error or correct shapes
            corrupt = bytearray(data)
            for i in rng.integers(0, len(data), 3):
                corrupt[i] ^= 0xFF
            p = tmp_path / f"flip{suffix}"
            p.write_bytes(bytes(corrupt))
            try:
                out = litecomp.load(p)
            except LitecompError:
                continue
            assert all(isinstance(v, np.ndarray) for v in out.values())


def test_zip_bomb_and_absurd_sizes(tmp_path):
    pkl = _tensor_pickle(4)
    path = torch_zip(tmp_path / "bomb.pth", pkl, {"0": np.zeros(4, np.float32).tobytes()},
                     compress=zipfile.ZIP_DEFLATED)
    raw = bytearray(path.read_bytes())
    cd = raw.index(b"PK\x01\x02")                  # data.pkl's central directory entry
    struct.pack_into("<I", raw, cd + 24, 0xFFFFFFF0)  # claim ~4 GB uncompressed
    path.write_bytes(bytes(raw))
    with pytest.raises(FormatError):
        litecomp.load(path)
    # a storage record claiming 4 GB inside a small file
    raw = bytearray(torch_zip(tmp_path / "big.pth", pkl,
                              {"0": np.zeros(4, np.float32).tobytes()}).read_bytes())
    for pos in [i for i in range(len(raw)) if raw[i:i + 4] == b"PK\x01\x02"]:
        struct.pack_into("<II", raw, pos + 20, 0xFFFFFFF0, 0xFFFFFFF0)
    (tmp_path / "big.pth").write_bytes(bytes(raw))
    with pytest.raises(FormatError):
        litecomp.load(tmp_path / "big.pth")
    # safetensors: absurd header length, absurd shape
    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", 2 ** 63) + b"{}")
    with pytest.raises(FormatError):
        litecomp.load(tmp_path / "h.safetensors")
    hdr = b'{"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}'
    (tmp_path / "s.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr + bytes(16))
    with pytest.raises(FormatError, match="needs"):
        litecomp.load(tmp_path / "s.safetensors")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"hello world, not a checkpoint")
    with pytest.raises(FormatError, match="not a format"):
        litecomp.load(tmp_path / "x.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(FormatError):
        litecomp.load(tmp_path / "empty.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(FormatError, match="data.pkl"):
        litecomp.load(tmp_path / "other.zip")
    with pytest.raises(litecomp.ArgumentError, match="does not exist"):
        litecomp.load(tmp_path / "missing.pth")
    assert isinstance(io.BytesIO, type)   # the stdlib io module is not shadowed


DEEP = {
    "dict-key": b"\x80\x02}" + b"N" + b"\x85" * 300000 + b"Ns.",
    "set-item": b"\x80\x02\x8f(" + b"N" + b"\x85" * 300000 + b"\x90.",
    "frozenset": b"\x80\x02(" + b"N" + b"\x85" * 300000 + b"\x91.",
    "ordereddict": (b"\x80\x02ccollections\nOrderedDict\n(N" + b"\x85" * 300000
                    + b"K\x01\x86\x85\x85R."),
    "nested-tuple": b"\x80\x02N" + b"\x85" * 300000 + b".",
    "nested-list": b"\x80\x02" + b"]" * 100000 + b"a" * 99999 + b".",
    "bytearray-bomb": b"\x80\x02cbuiltins\nbytearray\nJ\xff\xff\xff\x7f\x85R.",
}


def test_deep_and_huge_objects_do_not_crash(tmp_path):
    # run in a child: a C stack overflow would kill the test process itself
    import subprocess
    code = ("import sys, litecomp\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        litecomp.load(path)\n"
            "    except litecomp.LitecompError as e:\n        print('OK', path, flush=True)\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [str(torch_zip(tmp_path / f"{name}.pth", pkl)) for name, pkl in DEEP.items()]
    p = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True,
                       text=True, cwd=root, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr[-500:])
    assert p.stdout.split() == [w for path in paths for w in ("OK", path)]


def test_mutated_pickles_fail_cleanly(tmp_path):
    """Random byte changes in a real state-dict pickle: a litecomp error or a result."""
    from litecomp.io.unpickler import loads, storage_from_pid
    pw = PickleWriter()
    items = [(f"layer{i}.weight", (lambda i=i: pw.tensor(
        ["float32", "bfloat16", "uint16", "int64"][i % 4], str(i), 6, 0, (2, 3), (3, 1))))
        for i in range(6)]
    pw.dict_(items)
    good = pw.finish()
    assert len(loads(good, storage_from_pid)[0]) == 6
    rng = np.random.default_rng(7)
    outcomes = {"ok": 0, "error": 0}
    for _ in range(1500):
        data = bytearray(good)
        for i in rng.integers(0, len(data), rng.integers(1, 4)):
            data[i] = rng.integers(0, 256)
        try:
            loads(bytes(data), storage_from_pid)
            outcomes["ok"] += 1
        except LitecompError:
            outcomes["error"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 10


def test_broadcast_tensor_from_torch(tmp_path):
    torch = pytest.importorskip("torch")
    t = torch.arange(3.0).expand(4, 3)
    torch.save({"b": t}, tmp_path / "b.pth")
    b = litecomp.load(tmp_path / "b.pth")["b"]
    assert b.strides == (0, 4) and not b.flags.writeable
    np.testing.assert_array_equal(b, t.numpy())
    litecomp.save({"b": b}, tmp_path / "c.pth")
    assert torch.equal(torch.load(tmp_path / "c.pth", weights_only=True)["b"], t)


def test_npz_with_pickled_objects_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    np.savez(tmp_path / "o.npz", a=np.array([Reduce(os.system, f"touch {marker}")], object))
    with pytest.raises(FormatError, match="object arrays"):
        litecomp.load(tmp_path / "o.npz")
    np.savez_compressed(tmp_path / "c.npz", a=np.array([Reduce(os.system, f"touch {marker}")],
                                                       object))
    with pytest.raises(FormatError):
        litecomp.load(tmp_path / "c.npz")
    assert not marker.exists()


def test_npy_headers_numpy_cannot_parse_or_with_negative_sizes(tmp_path):
    """numpy's header parser lets tokenize errors and negative sizes through."""
    import io as _io
    bad = {"tokenize": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4',\x00" + b" " * 100 + b"\n",
           "negative": None}
    h = _io.BytesIO()
    np.lib.format.write_array_header_1_0(h, {"descr": "<f4", "fortran_order": False,
                                             "shape": (-1, 3)})
    bad["negative"] = h.getvalue() + bytes(24)
    for name, member in bad.items():
        for comp in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            path = tmp_path / f"{name}-{comp}.npz"
            with zipfile.ZipFile(path, "w", compression=comp) as z:
                z.writestr("w.npy", member)
            with pytest.raises(FormatError, match="w.npy"):
                litecomp.load(path)
            with litecomp.open(path) as ck, pytest.raises(FormatError):
                ck.info("w")


def test_npz_info_reads_only_the_header(tmp_path):
    a = np.zeros((512, 1024), np.float32)
    np.savez_compressed(tmp_path / "z.npz", a=a, b=np.arange(3, dtype=">i2"))
    with litecomp.open(tmp_path / "z.npz") as ck:
        assert ck.info("a") == (np.dtype(np.float32), (512, 1024))
        assert ck.info("b") == (np.dtype(np.int16), (3,))
    assert litecomp.load(tmp_path / "z.npz")["a"].flags.writeable
