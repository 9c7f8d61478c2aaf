"""``litecomp prune`` and the demo's prune step."""

import os

import numpy as np
import pytest

import litecomp
from litecomp import cli, prune, sparse


@pytest.fixture
def checkpoint(tmp_path):
    sd = litecomp.examples.tiny_decoder_lm()
    path = str(tmp_path / "in.safetensors")
    litecomp.save(sd, path)
    return sd, path


def _load_dense(path):
    return sparse.decompress(litecomp.load(path))


@pytest.mark.parametrize("method", ["l1", "ln", "nm", "block", "global"])
def test_prune_command_methods(method, checkpoint, tmp_path, capsys):
    sd, path = checkpoint
    out = str(tmp_path / f"{method}.safetensors")
    assert cli.main(["prune", path, out, "--amount", "0.5", "--method", method]) == 0
    text = capsys.readouterr().out
    assert "total" in text and "(dense)" in text
    back = litecomp.load(out)
    assert list(back) == list(sd)
    w = back["fc.weight"]
    if method == "global":  # one threshold: 50% over all the weights together
        zeros = sum(int((back[k] == 0).sum()) for k in sd if sd[k].ndim >= 2)
        assert zeros / sum(sd[k].size for k in sd if sd[k].ndim >= 2) == \
            pytest.approx(0.5, abs=0.01)
    else:
        assert np.mean(w == 0) == pytest.approx(0.5, abs=0.01)
    np.testing.assert_array_equal(back["fc.bias"], sd["fc.bias"])  # 1-D: untouched
    if method == "l1":
        np.testing.assert_array_equal(w, prune.apply(sd["fc.weight"],
                                                     prune.l1_unstructured(sd["fc.weight"], 0.5)))
    if method == "nm":
        assert ((w.reshape(-1, 4) != 0).sum(axis=1) <= 2).all()
    if method == "ln":
        rows_zero = (w == 0).all(axis=1)
        assert rows_zero.sum() == 500


def test_prune_command_sparse_layers_and_round_trip(checkpoint, tmp_path, capsys):
    sd, path = checkpoint
    dense = str(tmp_path / "dense.safetensors")
    small = str(tmp_path / "sparse.safetensors")
    args = ["--amount", "0.9", "--targets", "fc.weight,*.linear1.weight"]
    assert cli.main(["prune", path, dense, *args]) == 0
    assert cli.main(["prune", path, small, *args, "--sparse"]) == 0
    assert "(sparse)" in capsys.readouterr().out
    assert os.path.getsize(dense) == pytest.approx(os.path.getsize(path), rel=0.01)
    pruned_bytes = sum(v.nbytes for k, v in sd.items()
                       if k == "fc.weight" or k.endswith(".linear1.weight"))
    saved = os.path.getsize(dense) - os.path.getsize(small)
    assert saved == pytest.approx((0.9 - 1 / 32) * pruned_bytes, rel=0.05)
    a, b = litecomp.load(dense), _load_dense(small)
    assert list(a) == list(b)
    for k in a:
        assert a[k].tobytes() == b[k].tobytes()
    assert (a["transformer_decoder.layers.0.linear2.weight"] != 0).all()
    nm_out = str(tmp_path / "nm.safetensors")
    assert cli.main(["prune", path, nm_out, "--method", "nm", "--nm", "2:4", "--sparse"]) == 0
    assert "fc.weight.nm_values" in litecomp.load(nm_out)


def test_prune_command_bakes_a_torch_pruned_checkpoint(tmp_path):
    orig = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    mask = np.ones((4, 4), np.float32)
    mask[0] = 0
    path = str(tmp_path / "p.safetensors")
    litecomp.save({"l.weight_orig": orig, "l.weight_mask": mask}, path)
    out = str(tmp_path / "o.safetensors")
    assert cli.main(["prune", path, out, "--amount", "0.25"]) == 0
    back = litecomp.load(out)
    assert list(back) == ["l.weight"]
    assert (back["l.weight"] == 0).sum() == 4


def test_prune_command_amount_int_vs_float(checkpoint, tmp_path):
    sd, path = checkpoint
    for text, want in (("1", 1), ("1.0", sd["fc.weight"].size), ("100", 100)):
        out = str(tmp_path / f"a{text}.safetensors")
        assert cli.main(["prune", path, out, "--targets", "fc.weight", "--amount", text]) == 0
        assert int((litecomp.load(out)["fc.weight"] == 0).sum()) == want


def test_prune_command_block_shape_and_its_old_spelling(checkpoint, tmp_path, capsys):
    sd, path = checkpoint
    new, old = str(tmp_path / "new.safetensors"), str(tmp_path / "old.safetensors")
    assert cli.main(["prune", path, new, "--method", "block", "--block-shape", "2x8"]) == 0
    assert "deprecated" not in capsys.readouterr().err
    want = prune.apply(sd["fc.weight"], prune.block(sd["fc.weight"], 0.5, (2, 8)))
    assert litecomp.load(new)["fc.weight"].tobytes() == want.tobytes()
    assert cli.main(["prune", path, old, "--method", "block", "--block", "2x8"]) == 0
    assert "--block is deprecated; use --block-shape" in capsys.readouterr().err
    assert litecomp.load(old)["fc.weight"].tobytes() == want.tobytes()
    assert cli.main(["prune", path, old, "--method", "block", "--block", "2x8",
                     "--block-shape", "2x8"]) == 1
    assert "--block-shape: given twice" in capsys.readouterr().err


def test_prune_command_errors(checkpoint, tmp_path, capsys):
    _, path = checkpoint
    out = str(tmp_path / "x.safetensors")
    assert cli.main(["prune", path, out, "--targets", "nothing*"]) == 1
    err = capsys.readouterr().err
    assert "targets: ['nothing*'] match none of the 14 float tensors" in err
    assert cli.main(["prune", path, out, "--amount", "1.5"]) == 1
    assert "amount" in capsys.readouterr().err
    assert cli.main(["prune", path, out, "--method", "nm", "--nm", "two"]) == 1
    assert not os.path.exists(out)


def test_prune_command_targets_ignore_and_older_layers(checkpoint, tmp_path, capsys):
    sd, path = checkpoint
    out = str(tmp_path / "t.safetensors")
    assert cli.main(["prune", path, out, "--targets", "re:.*linear[12]\\.weight",
                     "--ignore", "*.layers.1.*", "--amount", "0.5"]) == 0
    back = litecomp.load(out)
    pruned = {k for k in sd if not np.array_equal(back[k], sd[k])}
    assert pruned == {"transformer_decoder.layers.0.linear1.weight",
                      "transformer_decoder.layers.0.linear2.weight"}
    capsys.readouterr()
    old = str(tmp_path / "old.safetensors")
    assert cli.main(["prune", path, old, "--layers", "fc.weight", "--amount", "0.5"]) == 0
    assert "--layers is deprecated; use --targets" in capsys.readouterr().err
    assert int((litecomp.load(old)["fc.weight"] == 0).sum()) == sd["fc.weight"].size // 2
    assert cli.main(["prune", path, old, "--layers", "fc.weight", "--targets", "x"]) == 1


def test_prune_command_recipe_file(checkpoint, tmp_path):
    import json
    sd, path = checkpoint
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps([{"method": "magnitude", "targets": ["fc.weight"],
                                "sparsity": 0.5},
                               {"method": "magnitude", "targets": ["embed.weight"], "n": 2,
                                "m": 4}]))
    out = str(tmp_path / "r.safetensors")
    assert cli.main(["prune", path, out, "--recipe", str(rec)]) == 0
    back = litecomp.load(out)
    ref, _ = prune.prune_state_dict(sd, json.loads(rec.read_text()))
    for k in sd:
        np.testing.assert_array_equal(back[k], ref[k])
    assert np.mean(back["fc.weight"] == 0) == 0.5
    assert ((back["embed.weight"].reshape(-1, 4) != 0).sum(axis=1) == 2).all()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"method": "rtn", "bits": 4}))
    assert cli.main(["prune", path, out + "2", "--recipe", str(bad)]) == 1
    assert not os.path.exists(out + "2")


def test_demo_prune_step(tmp_path, capsys):
    assert cli.main(["demo", "--small", "--steps", "model,save/reload,prune",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== prune" in out and "fc_pruned_sparse.safetensors" in out
    dense = os.path.getsize(tmp_path / "fc_pruned_dense.safetensors")
    # the same bytes of data; the JSON headers differ only in key order and padding
    assert abs(dense - os.path.getsize(tmp_path / "fc_original.safetensors")) <= 64
    small = os.path.getsize(tmp_path / "fc_pruned_sparse.safetensors")
    assert small / dense == pytest.approx(0.56, abs=0.03)  # tiny rows: offsets show
    sd = _load_dense(str(tmp_path / "fc_pruned_sparse.safetensors"))
    assert np.mean(sd["fc.weight"] == 0) == 0.5
    orig = litecomp.examples.tiny_decoder_lm()["fc.weight"]
    np.testing.assert_array_equal(sd["fc.weight"],
                                  prune.apply(orig, prune.l1_unstructured(orig, 0.5)))


def test_python_m_litecomp_prune(checkpoint, tmp_path):
    import subprocess
    import sys
    _, path = checkpoint
    out = str(tmp_path / "sub.safetensors")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "-m", "litecomp", "prune", path, out, "--amount",
                        "0.5", "--method", "global", "--sparse"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "(sparse)" in p.stdout and "total" in p.stdout
    assert "fc.weight.bitmask" in litecomp.load(out)
