"""compressed-tensors parity with the real readers: compressed-tensors' own decompressor
(through transformers' from_pretrained with run_compressed=False) gives litecomp's
dequantized weights bit for bit, and a small LLaMA litecomp compressed loads with
from_pretrained and gives the fake-quantized model's logits.  Skipped without torch,
transformers or compressed-tensors (the `export` extra)."""

import warnings

import numpy as np
import pytest

import litecomp
from litecomp import export
from litecomp.export import ct

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("compressed_tensors")

from litecomp.torch import to_numpy  # noqa: E402

RECIPES = [
    {"method": "rtn", "bits": 4, "group_size": 64},
    {"method": "rtn", "bits": 4, "group_size": 64, "scheme": "affine"},
    {"method": "rtn", "bits": 4, "axis": 0},
    {"method": "rtn", "bits": 3, "group_size": 32},
    {"method": "rtn", "bits": 8, "axis": 0},
    {"method": "rtn", "bits": 8, "axis": 0, "activations": "int8"},
    {"method": "fp8", "axis": 0},
    {"method": "fp8", "axis": None},
]


def _llama(tmp_path_factory, dtype):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=128, intermediate_size=256,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=False)
    model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    folder = tmp_path_factory.mktemp("llama")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return _llama(tmp_path_factory, torch.bfloat16)


def load(folder, run_compressed, dtype=torch.bfloat16):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype,
            quantization_config=CompressedTensorsConfig(run_compressed=run_compressed)).eval()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(map(str, r.values())))
def test_decompressor_gives_litecomp_weights(llama, tmp_path, recipe):
    folder, _model = llama
    sd = litecomp.load(folder)
    recipe = {**recipe, "targets": ["re:.*_proj\\.weight"]}
    export.compressed_tensors(sd, tmp_path / "ct", config=folder, recipe=recipe)
    m = load(tmp_path / "ct", run_compressed=False)
    got = {k: to_numpy(v.detach()) for k, v in m.state_dict().items()}
    stage = litecomp.recipe.stages(recipe)[0]
    n = 0
    for name, w in sd.items():
        if name.endswith("_proj.weight"):
            want = ct.quantize_for(w, stage, "bfloat16").dequantize(litecomp.dtypes.bfloat16)
            np.testing.assert_array_equal(got[name].view(np.uint16), want.view(np.uint16),
                                          err_msg=name)
            n += 1
    assert n == 14
    np.testing.assert_array_equal(got["lm_head.weight"].view(np.uint16),
                                  sd["lm_head.weight"].view(np.uint16))


def test_from_pretrained_logits_match_fake_quantized(llama, tmp_path):
    folder, model = llama
    sd = litecomp.load(folder)
    recipe = {"method": "rtn", "bits": 4, "group_size": 64, "targets": ["re:.*_proj\\.weight"]}
    export.compressed_tensors(sd, tmp_path / "ct", config=folder, recipe=recipe)
    stage = litecomp.recipe.stages(recipe)[0]
    fake = {k: (torch.from_numpy(ct.quantize_for(v, stage, "bfloat16")
                                 .dequantize(np.float32)).to(torch.bfloat16)
                if k.endswith("_proj.weight") else torch.from_numpy(np.asarray(v, np.float32))
                .to(torch.bfloat16)) for k, v in sd.items()}
    ref = transformers.LlamaForCausalLM(model.config).to(torch.bfloat16).eval()
    ref.load_state_dict(fake)
    ids = torch.randint(0, 384, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits.float()
        for run_compressed in (False, True):
            got = load(tmp_path / "ct", run_compressed).eval()(ids).logits.float()
            # the same bf16 weights (test above); the loaded model's forward rounds a little
            # differently (measured max |diff| 0.0049 both ways, about one bf16 step of these
            # O(1) logits); bound at 2x that
            assert torch.max(torch.abs(got - want)).item() <= 1e-2
    assert torch.max(torch.abs(want)).item() > 0.1


ONESHOT = [{"method": "awq", "bits": 4, "group_size": 64, "targets": ["re:.*mlp\\.(gate|up)_proj"]},
           {"method": "sparsegpt", "sparsity": 0.5, "targets": ["re:.*mlp\\.down_proj"]},
           {"method": "gptq", "bits": 4, "group_size": 64,
            "targets": ["re:.*(self_attn\\..*|mlp\\.down)_proj"]}]


@pytest.fixture(scope="module")
def llama32(tmp_path_factory):
    folder, model = _llama(tmp_path_factory, torch.float32)
    batches = [torch.randint(0, 384, (2, 32), generator=torch.Generator().manual_seed(i))
               for i in range(4)]
    return folder, model, batches


def test_torch_compress_runs_oneshot_then_writes_compressed_tensors(llama32, tmp_path):
    import copy

    import litecomp.torch as lt
    folder, model, batches = llama32
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    res = lt.oneshot(a, ONESHOT, batches, progress=False)
    rows = lt.compress(b, tmp_path / "ct", ONESHOT, batches, format="compressed-tensors",
                       config=folder, progress=False)
    # the model oneshot left (smoothing folded into the norms, weights fake-quantized) is
    # what compressed-tensors' own decompressor gives back, bit for bit (float32 scales)
    m = load(tmp_path / "ct", run_compressed=False, dtype=torch.float32)
    got = {k: to_numpy(v.detach()) for k, v in m.state_dict().items()}
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(got[k], to_numpy(v), err_msg=k)
    want = {k: to_numpy(v) for k, v in b.state_dict().items()}
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # the awq scales moved into the norms: they are no longer ones
    assert not np.all(got["model.layers.0.post_attention_layernorm.weight"] == 1)
    by = {r.name: r for r in rows}
    down = by["model.layers.1.mlp.down_proj.weight"]
    assert down.methods == ["sparsegpt", "gptq"] and down.sparsity >= 0.5
    errs = [r.error for r in res.report if r.name == "model.layers.1.mlp.down_proj.weight"]
    assert down.output_error == errs[-1] and 0 < errs[-1] < 0.5
    ids = batches[0]
    with torch.no_grad():
        ref = a(ids).logits
        out = m(ids).logits
    # the same float32 weights: the forward passes agree to float32 rounding (measured 0)
    assert torch.max(torch.abs(out - ref)).item() <= 1e-5
    # litecomp's own format holds oneshot's QTensors as they are
    lt.compress(copy.deepcopy(model), tmp_path / "m.safetensors", ONESHOT, batches,
                progress=False)
    small = litecomp.load(tmp_path / "m.safetensors")
    assert sorted(small) == sorted(res.state_dict)
    for k in small:
        np.testing.assert_array_equal(small[k], res.state_dict[k], err_msg=k)


def test_torch_compress_checks_the_format_before_calibrating(llama32, tmp_path):
    import litecomp.torch as lt
    _folder, model, batches = llama32
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(litecomp.ArgumentError, match="GGUF cannot hold a awq"):
        lt.compress(model, tmp_path / "m.gguf", ONESHOT[:1], batches, format="gguf")
    with pytest.raises(litecomp.ArgumentError, match="apply_shrink"):
        lt.compress(model, tmp_path / "m.safetensors", [{"method": "shrink_ffn",
                                                         "sparsity": 0.5}], batches)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert list(tmp_path.iterdir()) == []
