"""``litecomp inspect`` and the demo's save/reload step."""

import json

import ml_dtypes
import numpy as np
import pytest

import litecomp
from litecomp import cli
from litecomp.commands.inspect import zeros_of


def test_inspect_table_and_json(tmp_path, capsys):
    sd = {"w": np.array([[0.0, -0.0, 1.5, 2.0]], np.float32),
          "b": np.array([0, 0, 0, 1], ml_dtypes.bfloat16),
          "ids": np.array([0, 7, 0], np.int64), "e": np.zeros((0, 3), np.float16)}
    path = tmp_path / "m.safetensors"
    litecomp.save(sd, path, metadata={"who": "test"})
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "safetensors" in out and '"who": "test"' in out
    assert "50.00%" in out and "75.00%" in out and "66.67%" in out
    assert "4 tensors" in out
    assert cli.main(["inspect", str(path), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in doc["tensors"]}
    assert rows["w"]["zeros"] == 2 and rows["b"]["zeros"] == 3 and rows["ids"]["zeros"] == 2
    assert rows["e"]["numel"] == 0 and rows["e"]["sparsity"] == 0.0
    assert rows["w"]["shape"] == [1, 4] and rows["b"]["dtype"] == "bfloat16"
    assert doc["total"] == {"tensors": 4, "numel": 11, "zeros": 7, "sparsity": 7 / 11,
                            "bytes": 16 + 8 + 24, "file_bytes": path.stat().st_size}


def test_inspect_key_and_errors(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    torch.save({"model": {"w": torch.zeros(2, 2)}, "step": 1}, tmp_path / "c.pth")
    assert cli.main(["inspect", str(tmp_path / "c.pth")]) == 1
    assert "key='model'" in capsys.readouterr().err
    assert cli.main(["inspect", str(tmp_path / "c.pth"), "--key", "model"]) == 0
    assert "100.00%" in capsys.readouterr().out
    assert cli.main(["inspect", str(tmp_path / "nope.pth")]) == 1


def test_zeros_of_matches_numpy():
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float16, ml_dtypes.bfloat16, np.int8, np.bool_):
        a = (rng.integers(-1, 2, 1000) * rng.random(1000)).astype(dt)
        assert zeros_of(a) == a.size - np.count_nonzero(a.astype(np.float64))


def test_demo_save_reload_step(tmp_path, capsys):
    assert cli.main(["demo", "--small", "--steps", "model,save/reload",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "model.pth" in out and "model.safetensors" in out and "bit-identical" in out
    back = litecomp.load(tmp_path / "model.pth")
    sd = litecomp.examples.tiny_decoder_lm()
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_save_accepts_torch_bf16_without_copy(tmp_path):
    torch = pytest.importorskip("torch")
    t = {"b": torch.randn(3, 4).bfloat16(), "p": torch.nn.Parameter(torch.randn(2)),
         "f8": torch.randn(5).to(torch.float8_e5m2), "u16": torch.arange(4).to(torch.uint16)}
    for name in ("t.pth", "t.safetensors"):
        litecomp.save(t, tmp_path / name)
        back = litecomp.load(tmp_path / name)
        for k in t:
            assert back[k].dtype.name == str(t[k].dtype).split(".")[1], k
            assert np.array_equal(back[k].view(np.uint8),
                                  t[k].detach().view(torch.uint8).numpy()), k
    from litecomp.io import _arrays
    a = _arrays({"b": t["b"]}, "torch")["b"]
    assert a.__array_interface__["data"][0] == t["b"].data_ptr()
    with pytest.raises(litecomp.ArgumentError, match="'m'"):
        litecomp.save({"m": torch.empty(3, device="meta")}, tmp_path / "m.pth")
    with pytest.raises(litecomp.ArgumentError, match="'s'"):
        litecomp.save({"s": torch.eye(3).to_sparse()}, tmp_path / "s.pth")
