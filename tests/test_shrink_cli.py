"""litecomp shrink: options, the before/after table, configs, nothing written on bad input."""

import json
import os

import numpy as np
import pytest

import litecomp
from litecomp.cli import main


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "in" / "tiny.safetensors"
    path.parent.mkdir()
    litecomp.save(litecomp.examples.tiny_decoder_lm(), str(path))
    return path


def test_shrink_all_options(model, tmp_path, capsys):
    ids = tmp_path / "corpus.txt"
    ids.write_text(" ".join(str(i % 300) for i in range(5000)) + "\n7 7 7\n")
    out = tmp_path / "out.safetensors"
    assert main(["shrink", str(model), str(out), "--config", '{"heads": 4}', "--ffn", "0.5",
                 "--heads", "1", "--vocab-from", str(ids), "--vocab-size", "100",
                 "--rank", "8"]) == 0
    text = capsys.readouterr().out
    assert "transformer_decoder.layers.0" in text and "params before" in text
    cfg = json.loads((tmp_path / "out.config.json").read_text())
    assert cfg == {"vocab": 100, "d_model": 64, "heads": 3, "layers": 2, "ffn": 64,
                   "head_dim": 16}
    sd = litecomp.load(str(out))
    assert sd["embed.weight"].shape == (100, 64)
    assert sd["transformer_decoder.layers.1.linear2.first.weight"].shape == (8, 64)
    total = [ln for ln in text.splitlines() if ln.startswith("total")][0]
    assert "229,544" in total


def test_shrink_folder_output_and_recipe(model, tmp_path, capsys):
    rec = tmp_path / "r.json"
    rec.write_text(json.dumps([{"method": "shrink_ffn", "amount": 64}]))
    assert main(["shrink", str(model), str(tmp_path / "o") + os.sep, "--recipe", str(rec)]) == 0
    assert json.loads((tmp_path / "o" / "config.json").read_text())["ffn"] == 64
    assert (tmp_path / "o" / "model.safetensors").exists()


def test_a_plain_state_dict_must_be_told_its_head_count(model, tmp_path, capsys):
    """tiny.safetensors holds the example's tensors but no config: nothing is guessed from
    its shapes; the error names the key and the exact flag, and nothing is written."""
    out = tmp_path / "x.safetensors"
    assert main(["shrink", str(model), str(out), "--heads", "1"]) == 1
    err = capsys.readouterr().err
    assert """'heads' is missing""" in err and """give --config '{"heads": N}'""" in err
    assert "nn.TransformerDecoder's state dict does not carry nhead" in err
    assert not out.exists() and not (tmp_path / "x.config.json").exists()
    # FFN and vocabulary need no head count; the written config says it lacks one
    assert main(["shrink", str(model), str(out), "--ffn", "0.5"]) == 0
    assert "x.config.json has no 'heads'" in capsys.readouterr().out
    assert "heads" not in json.loads((tmp_path / "x.config.json").read_text())
    assert main(["shrink", str(model), str(out), "--heads", "1", "--config",
                 '{"heads": 4}']) == 0


def test_the_demo_model_and_chained_runs_read_the_config_beside_them(tmp_path, capsys):
    """litecomp demo writes model.config.json beside the example model; shrink writes
    OUT's config beside OUT: neither run needs --config."""
    from litecomp.demo import run_demo
    assert run_demo(small=True, out=str(tmp_path), steps=["save/reload"]) == 0
    assert json.loads((tmp_path / "model.config.json").read_text()) == \
        litecomp.examples.TINY_DECODER_LM
    out = tmp_path / "a.safetensors"
    for src in ("model.pth", "model.safetensors"):
        assert main(["shrink", str(tmp_path / src), str(out), "--heads", "1"]) == 0
        assert json.loads((tmp_path / "a.config.json").read_text())["heads"] == 3
        assert "note:" not in capsys.readouterr().out
    assert main(["shrink", str(out), str(tmp_path / "b.safetensors"), "--heads", "1"]) == 0
    assert json.loads((tmp_path / "b.config.json").read_text())["heads"] == 2


@pytest.mark.parametrize("argv,match", [
    (["--vocab-from", "missing.npy"], "does not exist"),
    (["--ffn", "2.0"], "amount"),
    ([], "nothing to do"),
    (["--vocab-size", "3"], "needs --vocab-from"),
    (["--config", "{bad"], "not valid JSON"),
])
def test_bad_input_writes_nothing(model, tmp_path, capsys, argv, match):
    out = tmp_path / "x.safetensors"
    assert main(["shrink", str(model), str(out), *argv]) == 1
    assert match in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "x.config.json").exists()


def test_ids_out_of_range_writes_nothing(model, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.array([1, 2, 1000]))
    out = tmp_path / "x.safetensors"
    assert main(["shrink", str(model), str(out), "--vocab-from",
                 str(tmp_path / "ids.npy")]) == 1
    assert "id 1000" in capsys.readouterr().err and not out.exists()
