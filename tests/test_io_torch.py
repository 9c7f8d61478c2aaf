"""litecomp.io against torch: files either side writes load bit-identically in the other."""

import os
import zipfile

import numpy as np
import pytest

import litecomp
from litecomp.io import dtypes as iodt
from litecomp.io import torchzip, zipfmt

torch = pytest.importorskip("torch")
from litecomp.torch import from_numpy, to_numpy  # noqa: E402

TORCH_DTYPES = list(iodt.TORCH)


def bits(a):
    a = np.ascontiguousarray(np.asarray(a))
    return a.dtype.name, a.shape, a.reshape(-1).view(np.uint8).tobytes()


def sample(name, shape=(3, 5), seed=0):
    dt = iodt.numpy_dtype(name)
    rng = np.random.default_rng(seed)
    if dt.kind == "b":
        return rng.random(shape) < 0.5
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, shape, dtype=dt, endpoint=True)
    if dt.kind == "c":
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    return (rng.standard_normal(shape) * 4).astype(np.float32).astype(dt)


def every_dtype():
    sd = {name: sample(name, seed=i) for i, name in enumerate(TORCH_DTYPES)}
    sd["scalar"] = np.array(2.5, np.float32)
    sd["empty"] = np.zeros((0, 4), np.float16)
    sd["vector"] = np.arange(7, dtype=np.int64)
    return sd


def test_litecomp_file_loads_in_torch_weights_only(tmp_path):
    sd = every_dtype()
    path = tmp_path / "all.pth"
    assert litecomp.save(sd, path) == str(path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
    for mmap in (False, True):
        t = torch.load(path, weights_only=True, mmap=mmap)
        assert list(t) == list(sd)
        for name, a in sd.items():
            assert bits(to_numpy(t[name])) == bits(a), name


def test_torch_file_loads_in_litecomp(tmp_path):
    sd = every_dtype()
    path = tmp_path / "torch.pth"
    torch.save({k: from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    for mmap in (True, False):
        back = litecomp.load(path, mmap=mmap)
        assert list(back) == list(sd)
        for name, a in sd.items():
            assert bits(back[name]) == bits(a), name


def test_views_and_tied_weights_share_memory_both_ways(tmp_path):
    w = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    sd = {"a": w, "b": w, "t": w[1:3].t(), "row": w[2], "other": torch.ones(3)}
    p1 = tmp_path / "tied.pth"
    torch.save(sd, p1)
    back = litecomp.load(p1)
    assert np.shares_memory(back["a"], back["b"]) and np.shares_memory(back["a"], back["t"])
    assert np.array_equal(back["t"], w[1:3].t().numpy())
    assert back["t"].strides == (4, 24)
    np.testing.assert_array_equal(back["row"], w[2].numpy())
    # litecomp writes the shared storage once, with offsets and strides, as torch does.
    p2 = tmp_path / "again.pth"
    litecomp.save(back, p2)
    names = [n for n in zipfile.ZipFile(p2).namelist() if "/data/" in n]
    assert len(names) == 2
    t = torch.load(p2, weights_only=True)
    assert t["a"].untyped_storage().data_ptr() == t["t"].untyped_storage().data_ptr()
    assert t["t"].stride() == (1, 6) and t["row"].storage_offset() == 12
    for k in sd:
        assert torch.equal(t[k], sd[k])
    # torch tensors given to save() directly keep their sharing too
    p3 = tmp_path / "direct.pth"
    litecomp.save(sd, p3)
    assert len([n for n in zipfile.ZipFile(p3).namelist() if "/data/" in n]) == 2
    t3 = torch.load(p3, weights_only=True)
    assert all(torch.equal(t3[k], sd[k]) for k in sd)


def test_numpy_views_of_one_base_written_once(tmp_path):
    base = np.arange(100, dtype=np.float32)
    sd = {"x": base[10:50].reshape(8, 5), "y": base[30:90:2], "z": np.ones(2, np.float32)}
    path = tmp_path / "v.pth"
    litecomp.save(sd, path)
    sizes = sorted(i.file_size for i in zipfile.ZipFile(path).infolist() if "/data/" in i.filename)
    assert sizes == [8, (89 - 10) * 4]          # the union of the two views, once
    t = torch.load(path, weights_only=True)
    for k, v in sd.items():
        np.testing.assert_array_equal(t[k].numpy(), v)


def test_layout_alignment_and_determinism(tmp_path):
    sd = every_dtype()
    a, b = tmp_path / "a" / "m.pth", tmp_path / "b" / "m.pth"
    a.parent.mkdir()
    b.parent.mkdir()
    litecomp.save(sd, a)
    litecomp.save(dict(sd), b)
    assert a.read_bytes() == b.read_bytes()
    with open(a, "rb") as f:
        members = zipfmt.read_members(f, os.path.getsize(a), "a")
    assert all(m.offset % 64 == 0 for m in members.values())
    # the same records, in the same order, as torch.save writes
    ref = tmp_path / "m.pth"
    torch.save({k: from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, ref)
    ours = [n.split("/", 1)[1] for n in zipfile.ZipFile(a).namelist()]
    theirs = [n.split("/", 1)[1] for n in zipfile.ZipFile(ref).namelist()]
    assert ours == theirs
    assert zipfile.ZipFile(a).testzip() is None


def test_zip64_path_with_lowered_threshold(tmp_path):
    sd = {"w": np.arange(1000, dtype=np.float32), "b": np.ones(3, np.float64)}
    path = tmp_path / "z64.pth"
    with open(path, "wb") as f:
        torchzip.write(sd, f, "z64", zip64_limit=256)
    raw = path.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw
    zf = zipfile.ZipFile(path)
    assert zf.testzip() is None
    info = zf.getinfo("z64/data/0")
    assert info.file_size == 4000 and info.header_offset > 256
    t = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(t["w"].numpy(), sd["w"])
    back = litecomp.load(path)
    np.testing.assert_array_equal(back["w"], sd["w"])
    np.testing.assert_array_equal(back["b"], sd["b"])


def test_big_endian_file(tmp_path):
    sd = {n: sample(n) for n in ("float32", "bfloat16", "int64", "complex128", "uint8")}
    path = tmp_path / "be.pth"
    with open(path, "wb") as f:
        torchzip.write(sd, f, "be", byteorder="big")
    back = litecomp.load(path)
    t = torch.load(path, weights_only=True)
    for k, v in sd.items():
        assert bits(back[k]) == bits(v), k
        assert bits(to_numpy(t[k])) == bits(v), k


def test_real_model_round_trip_and_pruned(tmp_path):
    from torch.nn.utils import prune
    from litecomp.torch import DecoderLM
    torch.manual_seed(0)
    model = DecoderLM(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    prune.l1_unstructured(model.fc, "weight", amount=0.5)
    sd = model.state_dict()
    assert "fc.weight_orig" in sd and "fc.weight_mask" in sd
    p1, p2 = tmp_path / "model.pth", tmp_path / "lite.pth"
    torch.save(sd, p1)
    back = litecomp.load(p1)
    assert list(back) == list(sd)
    litecomp.save(back, p2)
    t = torch.load(p2, weights_only=True)
    for k in sd:
        assert torch.equal(t[k], sd[k]) and t[k].dtype == sd[k].dtype, k
    fresh = DecoderLM(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    prune.identity(fresh.fc, "weight")
    fresh.load_state_dict(t)
    # and the plain model (no pruning) straight from litecomp's example weights
    sd2 = litecomp.examples.decoder_lm(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    litecomp.save(sd2, tmp_path / "ex.pth")
    m = DecoderLM(vocab=300, d_model=32, heads=4, layers=2, ffn=64)
    m.load_state_dict(torch.load(tmp_path / "ex.pth", weights_only=True))
    assert torch.equal(m.fc.weight, torch.from_numpy(sd2["fc.weight"]))


def test_nested_checkpoint_and_key(tmp_path):
    sd = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    path = tmp_path / "ckpt.pth"
    torch.save({"model": sd, "epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(litecomp.FormatError, match="key='model'") as e:
        litecomp.load(path)
    assert "'epoch'" in str(e.value)
    back = litecomp.load(path, key="model")
    assert list(back) == ["w", "b"] and back["w"].shape == (2, 3)
    with pytest.raises(litecomp.ArgumentError, match="key: 'nope'"):
        litecomp.load(path, key="nope")
    torch.save({"a": {"b": sd}, "n": 1}, tmp_path / "deep.pth")
    assert list(litecomp.load(tmp_path / "deep.pth", key=("a", "b"))) == ["w", "b"]
    with litecomp.open(tmp_path / "deep.pth", key=["a", "b"]) as ck:
        assert ck.info("w") == (np.dtype(np.float32), (2, 3))
    torch.save(torch.ones(3), tmp_path / "single.pth")
    with pytest.raises(litecomp.FormatError, match="single tensor"):
        litecomp.load(tmp_path / "single.pth")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(litecomp.UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        litecomp.load(tmp_path / "module.pth")


def test_parameters_and_legacy_format(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 4))
    sd = {"p": p, "h": torch.randn(5, dtype=torch.float16), "i": torch.arange(4)}
    legacy = tmp_path / "legacy.pt"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert litecomp.io.detect(legacy) == "torch-legacy"
    for mmap in (True, False):
        back = litecomp.load(legacy, mmap=mmap)
        for k in sd:
            np.testing.assert_array_equal(back[k], sd[k].detach().numpy())
    torch.save(sd, tmp_path / "param.pth")
    back = litecomp.load(tmp_path / "param.pth")
    np.testing.assert_array_equal(back["p"], p.detach().numpy())
