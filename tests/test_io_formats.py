"""safetensors, npz, shards, safe writes, litecomp.open and save()'s arguments."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp.errors import ArgumentError, DTypeError, FormatError
from litecomp.io import dtypes as iodt


def same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a.dtype == b.dtype and a.shape == b.shape and
            np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def st_sample():
    rng = np.random.default_rng(3)
    out = {}
    for st_name, np_name in iodt.SAFETENSORS.items():
        dt = iodt.numpy_dtype(np_name)
        x = rng.standard_normal((2, 3)) * 3
        if dt.kind == "b":
            out[np_name] = x > 0
        elif dt.kind == "c":
            out[np_name] = (x + 1j * x).astype(dt)
        else:
            out[np_name] = np.abs(x).astype(np.float32).astype(dt) if dt.kind == "u" or \
                np_name == "float8_e8m0fnu" else x.astype(np.float32).astype(dt)
    out["odd"] = np.arange(3, dtype=np.int8)       # forces unaligned neighbours elsewhere
    out["scalar"] = np.array(1.5, np.float64)
    return out


def test_safetensors_round_trip_every_dtype(tmp_path):
    sd = st_sample()
    path = tmp_path / "m.safetensors"
    litecomp.save(sd, path, metadata={"format": "np", "note": "ü"})
    for mmap in (True, False):
        back = litecomp.load(path, mmap=mmap)
        assert list(back) == list(sd)
        for k in sd:
            assert same(back[k], sd[k]), k
    with litecomp.open(path) as ck:
        assert ck.metadata == {"format": "np", "note": "ü"}
        assert ck.info("bfloat16") == (np.dtype(ml_dtypes.bfloat16), (2, 3))
        assert ck.format == "safetensors" and len(ck) == len(sd)
        assert all(ck[k].flags.aligned for k in ck)


def test_safetensors_interop_with_package(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    sd = {k: v for k, v in st_sample().items() if not k.startswith("float8")}
    ours = tmp_path / "ours.safetensors"
    litecomp.save(sd, ours, metadata={"a": "b"})
    theirs = st_numpy.load_file(str(ours))
    for k in sd:
        assert same(theirs[k], sd[k]), k
    path = tmp_path / "theirs.safetensors"
    st_numpy.save_file(sd, str(path), metadata={"x": "y"})
    back = litecomp.load(path)
    for k in sd:
        assert same(back[k], sd[k]), k
    assert litecomp.open(path).metadata == {"x": "y"}


def test_safetensors_float8_interop_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    from litecomp.torch import to_numpy
    t = {"e4": torch.randn(4, 5).to(torch.float8_e4m3fn),
         "e5": torch.randn(3).to(torch.float8_e5m2), "bf": torch.randn(2, 2).bfloat16()}
    path = tmp_path / "f8.safetensors"
    st_torch.save_file(t, str(path))
    back = litecomp.load(path)
    for k in t:
        assert same(back[k], to_numpy(t[k])), k
    litecomp.save(back, tmp_path / "again.safetensors")
    again = st_torch.load_file(str(tmp_path / "again.safetensors"))
    for k in t:
        assert torch.equal(again[k].view(torch.uint8), t[k].view(torch.uint8)), k


def _st_file(path, header, data=b"", raw_header=None):
    js = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(js)) + js + data)
    return path


@pytest.mark.parametrize("header,data,match", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlapping"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(12), "cover"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "past"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs"),
    ({"a": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "dtype"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "shape"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, bytes(8), "data_offsets"),
    ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), "exactly"),
    ({"__metadata__": {"k": 1}}, b"", "__metadata__"),
    ([1, 2], b"", "object"),
])
def test_safetensors_header_validation(tmp_path, header, data, match):
    with pytest.raises(FormatError, match=match):
        litecomp.load(_st_file(tmp_path / "bad.safetensors", header, data))


def test_safetensors_bad_json_and_duplicates(tmp_path):
    with pytest.raises(FormatError, match="JSON"):
        litecomp.load(_st_file(tmp_path / "a.safetensors", None, b"", b"{not json}  "))
    dup = (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')
    with pytest.raises(FormatError, match="twice"):
        litecomp.load(_st_file(tmp_path / "b.safetensors", None, b"x", dup))


def test_npz_both_ways(tmp_path):
    sd = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.arange(5),
          "f": np.asfortranarray(np.ones((2, 3), np.float16)), "s": np.array(3.0)}
    np.savez(tmp_path / "a.npz", **sd)
    np.savez_compressed(tmp_path / "b.npz", **sd)
    for name in ("a.npz", "b.npz"):
        back = litecomp.load(tmp_path / name)
        assert list(back) == list(sd)
        for k in sd:
            np.testing.assert_array_equal(back[k], sd[k])
            assert back[k].dtype == sd[k].dtype
    litecomp.save(sd, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as z:
        for k in sd:
            np.testing.assert_array_equal(z[k], sd[k])
    with pytest.raises(DTypeError, match="npz"):
        litecomp.save({"b": np.ones(2, ml_dtypes.bfloat16)}, tmp_path / "d.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_shards(tmp_path, suffix):
    sd = litecomp.examples.tiny_decoder_lm()
    stem = "model" if suffix == ".safetensors" else "pytorch_model"
    index = litecomp.save(sd, tmp_path / f"{stem}{suffix}", max_shard_size="100KB")
    assert index == str(tmp_path / f"{stem}{suffix}.index.json")
    meta = json.loads(open(index).read())
    files = sorted(set(meta["weight_map"].values()))
    n = len(files)
    assert n > 2 and files[0] == f"{stem}-00001-of-{n:05d}{suffix}"
    assert meta["metadata"]["total_size"] == sum(a.nbytes for a in sd.values())
    assert list(meta["weight_map"]) == list(sd)
    for f in files[:-1]:
        single = litecomp.load(tmp_path / f)
        assert sum(a.nbytes for a in single.values()) <= 100_000 or len(single) == 1
    for where in (index, tmp_path):
        back = litecomp.load(where)
        assert list(back) == list(sd)
        assert all(same(back[k], sd[k]) for k in sd)
    # fewer shards on a second save: the stale ones go
    index2 = litecomp.save(sd, tmp_path / f"{stem}{suffix}", max_shard_size="300KB")
    files2 = set(json.loads(open(index2).read())["weight_map"].values())
    assert len(files2) > 1 and len(files2) < n
    assert {f for f in os.listdir(tmp_path) if f.startswith(stem + "-")} == files2
    # everything fits: one plain file, no index (as transformers does), old shards gone
    one = litecomp.save(sd, tmp_path / f"{stem}{suffix}", max_shard_size="1GB")
    assert one == str(tmp_path / f"{stem}{suffix}")
    assert os.listdir(tmp_path) == [f"{stem}{suffix}"]
    assert list(litecomp.load(one)) == list(sd) == list(litecomp.load(tmp_path))


def test_shard_index_problems(tmp_path):
    sd = {"a": np.ones(1000, np.float32), "b": np.zeros(1000, np.float32)}
    index = litecomp.save(sd, tmp_path / "model.safetensors", max_shard_size=4000)
    meta = json.loads(open(index).read())
    os.remove(tmp_path / meta["weight_map"]["b"])
    with pytest.raises(FormatError, match="missing"):
        litecomp.load(index)
    meta["weight_map"]["b"] = "../../etc/passwd"
    (tmp_path / "evil.index.json").write_text(json.dumps(meta))
    with pytest.raises(FormatError, match="plain file name"):
        litecomp.load(tmp_path / "evil.index.json")
    with pytest.raises(FormatError, match="exactly one"):
        litecomp.load(tmp_path)          # two indexes in the folder now
    with pytest.raises(ArgumentError, match="max_shard_size"):
        litecomp.save(sd, tmp_path / "x.safetensors", max_shard_size="lots")


def test_atomic_save_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    litecomp.save({"w": np.ones(4, np.float32)}, path)
    before = path.read_bytes()
    from litecomp.io import torchzip

    def failing_write(arrays, f, archive, **kw):
        f.write(b"partial garbage")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torchzip, "write", failing_write)
    with pytest.raises(RuntimeError, match="disk full"):
        litecomp.save({"w": np.zeros(4, np.float32)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pth"]           # no temporary left behind
    monkeypatch.undo()
    with pytest.raises(RuntimeError):
        monkeypatch.setattr(torchzip, "write", failing_write)
        litecomp.save({"w": np.zeros(4, np.float32)}, tmp_path / "new.pth")
    assert os.listdir(tmp_path) == ["m.pth"]
    assert oct(os.stat(path).st_mode & 0o777) != oct(0o600)


def test_save_argument_errors(tmp_path):
    with pytest.raises(ArgumentError, match="suffix"):
        litecomp.save({"a": np.ones(2)}, tmp_path / "x.weird")
    with pytest.raises(ArgumentError, match="format"):
        litecomp.save({"a": np.ones(2)}, tmp_path / "x.pth", format="gguf")
    with pytest.raises(ArgumentError, match="state_dict"):
        litecomp.save([np.ones(2)], tmp_path / "x.pth")
    with pytest.raises(ArgumentError, match="'a'"):
        litecomp.save({"a": [1, 2]}, tmp_path / "x.pth")
    with pytest.raises(DTypeError, match="'o'"):
        litecomp.save({"o": np.array(["x"], object)}, tmp_path / "x.pth")
    with pytest.raises(ArgumentError, match="metadata"):
        litecomp.save({"a": np.ones(2)}, tmp_path / "x.pth", metadata={"a": "b"})
    with pytest.raises(ArgumentError, match="folder"):
        litecomp.save({"a": np.ones(2)}, tmp_path / "nope" / "x.pth")
    # a non-native byte order and a format forced against the suffix
    be = np.arange(4, dtype=">f4")
    litecomp.save({"a": be}, tmp_path / "x.bin", format="safetensors")
    assert litecomp.io.detect(tmp_path / "x.bin") == "safetensors"
    assert same(litecomp.load(tmp_path / "x.bin")["a"], be.astype("<f4"))


def test_open_is_lazy(tmp_path):
    sd = litecomp.examples.tiny_decoder_lm()
    for name in ("m.pth", "m.safetensors", "m.npz"):
        litecomp.save(sd, tmp_path / name)
        with litecomp.open(tmp_path / name) as ck:
            assert list(ck) == list(sd) and "fc.weight" in ck and "nope" not in ck
            assert ck.info("fc.weight") == (np.dtype(np.float32), (1000, 64))
            w = ck["fc.weight"]
            assert not w.flags.writeable and same(w, sd["fc.weight"])
            with pytest.raises(KeyError):
                ck["nope"]
            assert repr(ck).startswith("<litecomp.io.Checkpoint")


@pytest.mark.parametrize("name", ["m.pth", "m.safetensors", "m.npz", "legacy.pt"])
def test_loaded_arrays_are_writeable_and_file_untouched(tmp_path, name):
    sd = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "i": np.arange(3)}
    path = tmp_path / name
    if name == "legacy.pt":
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in sd.items()}, path,
                   _use_new_zipfile_serialization=False)
    else:
        litecomp.save(sd, path)
    before = path.read_bytes()
    for mmap in (True, False):
        back = litecomp.load(path, mmap=mmap)
        for k, v in back.items():
            assert v.flags.writeable, (k, mmap)
            v[...] = 0
    assert path.read_bytes() == before


def test_star_import_does_not_shadow_builtin_open():
    ns = {}
    exec("from litecomp import *\nfrom litecomp.io import *", ns)
    assert "open" not in ns and "load" in ns and "save" in ns
    assert litecomp.open is litecomp.io.open


def test_save_over_the_file_it_was_loaded_from(tmp_path):
    path = tmp_path / "m.pth"
    sd = {"w": np.arange(1 << 16, dtype=np.float32), "b": np.ones(3, np.float32)}
    litecomp.save(sd, path)
    back = litecomp.load(path)              # memory-mapped from path
    back["b"][:] = 7
    litecomp.save(back, path)               # reads the old map while writing the new file
    again = litecomp.load(path, mmap=False)
    assert same(again["w"], sd["w"]) and same(again["b"], np.full(3, 7, np.float32))


def test_killed_process_leaves_previous_file(tmp_path):
    import signal
    import subprocess
    import sys
    path = tmp_path / "m.safetensors"
    litecomp.save({"w": np.ones(8, np.float32)}, path)
    before = path.read_bytes()
    code = f"""
import os, signal, numpy as np, litecomp
from litecomp.io import safetensors as st
real = st.write
def dying(arrays, f, metadata=None):
    f.write(b"12345678" * 1000)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
st.write = dying
litecomp.save({{"w": np.zeros(1 << 20, np.float32)}}, {str(path)!r})
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    assert path.read_bytes() == before
    leftovers = [f for f in os.listdir(tmp_path) if f != "m.safetensors"]
    assert all(f.startswith(".m.safetensors.") and f.endswith(".tmp") for f in leftovers)


def test_mmap_modes(tmp_path):
    sd = {"w": np.arange(64, dtype=np.float32)}
    path = tmp_path / "m.pth"
    litecomp.save(sd, path)
    before = path.read_bytes()
    a = litecomp.load(path)["w"]
    a[:] = -1                                    # copy-on-write: the file is untouched
    assert path.read_bytes() == before
    with litecomp.open(path) as ck:
        v = ck["w"]
        assert not v.flags.writeable
        np.testing.assert_array_equal(v, sd["w"])
    c = litecomp.load(path, mmap=False)["w"]
    assert c.flags.writeable and (c.base is None or c.base.flags.owndata)
