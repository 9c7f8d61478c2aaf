"""litecomp compress runs every recipe family by the pieces that own it: shrink stages by
litecomp.shrink, sparsegpt / wanda / gptq by litecomp.calib with saved Hessians.  A recipe
mixing shrink, magnitude, sparsegpt, wanda, gptq and rtn gives, in every format, exactly
what those pieces give when called one after the other in memory."""

import json

import numpy as np
import pytest

import litecomp
from litecomp import calib, shrink
from litecomp.cli import main
from litecomp.compress import compress

from test_compress import model  # noqa: F401  (the fixture)
from test_export import gguf  # noqa: F401  (skips without it)

MIX = [{"method": "shrink_ffn", "sparsity": 0.5},
       {"method": "magnitude", "sparsity": 0.3, "targets": ["re:.*mlp\\.up_proj.*"]},
       {"method": "sparsegpt", "sparsity": 0.5, "targets": ["re:.*mlp\\.gate_proj.*"]},
       {"method": "wanda", "n": 2, "m": 4, "targets": ["re:.*mlp\\.down_proj.*"]},
       {"method": "gptq", "bits": 4, "group_size": 64, "targets": ["re:.*(self_attn|mlp)\\..*"]},
       {"method": "rtn", "bits": 8, "axis": 0, "targets": ["lm_head.weight"]}]


def hessians_for(sd, rng):
    """A Hessian of correlated inputs for every Linear of ``sd`` (its input width)."""
    hs = {}
    for name, w in sd.items():
        if name.endswith("_proj.weight"):
            d = w.shape[1]
            x = rng.standard_normal((256, d)).astype(np.float32) @ \
                (np.eye(d, dtype=np.float32) + 0.1 * rng.standard_normal((d, d)).astype(np.float32))
            h = calib.Hessian(d)
            h.update(x)
            hs[name[:-len(".weight")]] = h
    return hs


def in_memory(sd, cfg, stages, hs):
    """The same recipe by the owners, called in turn: shrink, prune, calib, quant."""
    shrunk = shrink.shrink_state_dict(sd, stages[:1], config=cfg)
    out = shrunk.state_dict
    masks = {}
    for st in stages[1:]:
        out, _ = calib.apply_stage(out, st, hs, masks=masks)
    return shrunk, out


@pytest.fixture
def case(model, tmp_path, rng):
    sd, cfg, src, _out = model
    shrunk = shrink.shrink_state_dict(sd, MIX[:1], config=cfg)
    hs = hessians_for(shrunk.state_dict, rng)
    hp = calib.save_hessians(hs, tmp_path / "H.safetensors")
    return sd, cfg, src, hp, calib.load_hessians(hp)


def test_mixed_recipe_litecomp_format_equals_the_owners(case, tmp_path):
    sd, cfg, src, hp, hs = case
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(MIX))
    out = tmp_path / "m.safetensors"
    assert main(["compress", str(src), str(out), "--recipe", str(recipe), "--hessians", hp,
                 "--quiet"]) == 0
    shrunk, want = in_memory(sd, cfg, MIX, hs)
    got = litecomp.load(out)
    assert sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert shrunk.config["intermediate_size"] == 256
    assert got["model.layers.0.mlp.down_proj.weight.qmeta"] is not None
    # the gptq stage after sparsegpt kept its zeros; after wanda 2:4 too
    gate = litecomp.quant.load_quantized(got, "model.layers.1.mlp.gate_proj.weight")
    assert np.mean(gate.dequantize() == 0) >= 0.5
    down = litecomp.quant.load_quantized(got, "model.layers.1.mlp.down_proj.weight")
    assert (down.dequantize().reshape(-1, 4) != 0).sum(axis=1).max() <= 2
    rows = {r["name"]: r for r in
            json.loads((tmp_path / "m.safetensors.report.json").read_text())["tensors"]}
    g = rows["model.layers.1.mlp.gate_proj.weight"]
    assert g["methods"] == ["sparsegpt", "gptq"] and 0.5 <= g["sparsity"] < 0.55
    assert 0 < g["output_error"] < 0.5 and g["bytes_before"] == 256 * 256 * 4
    assert rows["lm_head.weight"]["methods"] == ["rtn"]
    assert rows["lm_head.weight"]["output_error"] is None


def test_mixed_recipe_safetensors_format_is_the_dequantized_result(case, tmp_path):
    sd, cfg, src, hp, hs = case
    compress(src, tmp_path / "d.safetensors", MIX, format="safetensors", hessians=hp,
             config=src)
    _shrunk, want = in_memory(sd, cfg, MIX, hs)
    fake = litecomp.quant.dequantize_state_dict(want)
    got = litecomp.load(tmp_path / "d.safetensors")
    assert sorted(got) == sorted(fake)
    for k in fake:
        np.testing.assert_array_equal(got[k], fake[k], err_msg=k)


def test_mixed_recipe_compressed_tensors_reads_back_to_the_owners(case, tmp_path):
    sd, cfg, src, hp, hs = case
    (src / "tokenizer_config.json").write_text('{"model_max_length": 128}')
    compress(src, tmp_path / "ct", MIX, format="compressed-tensors", hessians=hp, config=src)
    # shrink_ffn kept the vocabulary: the tokenizer files still belong to the model
    assert (tmp_path / "ct" / "tokenizer_config.json").read_text() == '{"model_max_length": 128}'
    _shrunk, want = in_memory(sd, cfg, MIX, hs)
    fake = litecomp.quant.dequantize_state_dict(want)
    back, conf = litecomp.export.read_compressed_tensors(tmp_path / "ct")
    for k in fake:  # a float32 model: scales stored exactly, so the same bits
        np.testing.assert_array_equal(back[k], fake[k], err_msg=k)
    assert conf["intermediate_size"] == 256
    groups = conf["quantization_config"]["config_groups"]
    assert sorted((g["format"], g["weights"]["num_bits"]) for g in groups.values()) == \
        [("naive-quantized", 8), ("pack-quantized", 4)]


def test_mixed_recipe_gguf_is_the_owners_result_written_by_export_gguf(case, tmp_path):
    sd, cfg, src, hp, hs = case
    stages = MIX[:4] + [{"method": "gguf", "qtype": "Q4_K"}]
    compress(src, tmp_path / "m.gguf", stages, format="gguf", hessians=hp, config=src)
    shrunk, want = in_memory(sd, cfg, stages[:4], hs)
    litecomp.export.gguf(want, tmp_path / "want.gguf", config=shrunk.config, qtype="Q4_K")
    assert (tmp_path / "m.gguf").read_bytes() == (tmp_path / "want.gguf").read_bytes()
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    ff = [f for f in r.fields.values() if f.name == "llama.feed_forward_length"][0]
    assert int(ff.parts[-1][0]) == 256


@pytest.mark.parametrize("stages,fmt,match", [
    ([{"method": "gptq", "bits": 4}], "litecomp", "needs calibration data"),
    ([{"method": "awq", "bits": 4}], "litecomp", "litecomp.torch.compress"),
    ([{"method": "magnitude", "sparsity": 0.5}, {"method": "shrink_ffn", "sparsity": 0.5}],
     "litecomp", "come first"),
    ([{"method": "lowrank", "rank": 8}], "gguf", "low-rank"),
    ([{"method": "gptq", "bits": 4}], "gguf", "GGUF cannot hold a gptq"),
    ([{"method": "gptq", "bits": 4, "act_order": True}], "compressed-tensors", "static_groups"),
    ([{"method": "sparsegpt", "sparsity": 0.5, "bits": 4}], "litecomp", "then a gptq stage"),
])
def test_stages_that_cannot_run_stop_before_any_output(case, tmp_path, stages, fmt, match):
    _sd, _cfg, src, hp, _hs = case
    out = tmp_path / "out"  # the model fixture's, empty
    target = out / {"gguf": "m.gguf", "compressed-tensors": "ct"}.get(fmt, "m.safetensors")
    with pytest.raises(litecomp.LitecompError, match=match):
        compress(src, target, stages, format=fmt, config=src,
                 hessians=None if match == "needs calibration data" else hp)
    assert list(out.iterdir()) == []


def test_a_missing_hessian_names_the_tensor(case, tmp_path):
    _sd, _cfg, src, hp, hs = case
    del hs["model.layers.1.self_attn.q_proj"]
    with pytest.raises(litecomp.ArgumentError, match="model.layers.1.self_attn.q_proj"):
        compress(src, tmp_path / "m.safetensors", {"method": "gptq", "bits": 4,
                                                    "targets": ["re:.*q_proj.*"]}, hessians=hs)
    assert not (tmp_path / "m.safetensors").exists()
