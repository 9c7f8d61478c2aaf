"""Shrunk Hugging Face models (real transformers classes built from small configs) compute
what the masked originals compute: LLaMA (GQA), Qwen2 (q/k/v biases), Mistral, BERT, GPT-2."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers", reason="transformers is optional (the hf extra)")

from litecomp import shrink  # noqa: E402
from litecomp.errors import ArgumentError  # noqa: E402
from litecomp.torch import apply_shrink, load_numpy_state_dict, to_numpy  # noqa: E402
from shrink_cases import KeptLayerNorm  # noqa: E402

# float32 logits of ~1; the measured largest difference was below 3e-6 -> 2e-5 (7x)
ATOL = 2e-5
SMALL = dict(vocab_size=64, num_hidden_layers=2)


def _llama_like(kind):
    cls = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
           "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
           "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM)}[kind]
    cfg = cls[0](hidden_size=32, intermediate_size=48, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=4, max_position_embeddings=64,
                 bos_token_id=1, eos_token_id=2, pad_token_id=None, **SMALL)
    return cfg, cls[1]


def _bert():
    cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=64, hidden_act="gelu",
                                  pad_token_id=0, **SMALL)
    return cfg, transformers.BertModel


def _gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_positions=64, bos_token_id=1,
                                  eos_token_id=2, vocab_size=64, n_layer=2)
    return cfg, transformers.GPT2LMHeadModel


MODELS = {"llama": lambda: _llama_like("llama"), "qwen2": lambda: _llama_like("qwen2"),
          "mistral": lambda: _llama_like("mistral"), "bert": _bert, "gpt2": _gpt2}


def make(kind, seed=0):
    cfg, cls = MODELS[kind]()
    torch.manual_seed(seed)
    m = cls(cfg).eval()
    sd = {k: to_numpy(v).copy() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(seed)
    for k, v in sd.items():   # random biases and norms: nothing hides behind zeros or ones
        if k.endswith("bias") or "norm" in k.lower():
            sd[k] = (v + 0.2 * rng.standard_normal(v.shape)).astype(np.float32)
    load_numpy_state_dict(m, sd, strict=False)
    return m, sd, cfg.to_dict(), cls


def out(m, ids):
    with torch.no_grad():
        o = m(input_ids=ids)
    return o.logits if hasattr(o, "logits") else o.last_hidden_state


def equivalent(kind, step, *, hidden=False):
    m, sd, cfg, cls = make(kind)
    r = step(sd, cfg)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    ref_m, _, _, _ = make(kind)
    load_numpy_state_dict(ref_m, r.masked(sd), strict=False)
    ref = out(ref_m, ids)
    assert (ref - out(m, ids)).abs().max() > 1e-3        # the removal matters
    if r.loadable:   # the new config.json alone builds the smaller model
        small = cls(cls.config_class.from_dict(json.loads(json.dumps(r.config)))).eval()
        load_numpy_state_dict(small, r.state_dict, strict=False)
    else:
        small, _, _, _ = make(kind)
        apply_shrink(small, r)
    torch.testing.assert_close(out(small, ids), ref, atol=ATOL, rtol=0)
    return r


@pytest.mark.parametrize("kind", list(MODELS))
def test_ffn(kind):
    r = equivalent(kind, lambda sd, cfg: shrink.ffn(sd, None, 0.5, config=cfg))
    assert r.loadable


@pytest.mark.parametrize("kind", list(MODELS))
def test_ffn_per_layer_needs_apply_shrink(kind):
    r = equivalent(kind, lambda sd, cfg: shrink.ffn(sd, None, 0.5, granularity="global",
                                                    round_to=1, config=cfg, targets=None,
                                                    ignore=None))
    assert r.loadable == (len({len(v) for k, v in r.kept.items()}) == 1)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("gqa,amount", [("groups", 4), ("query", 2)])
def test_heads_gqa(kind, gqa, amount):
    r = equivalent(kind, lambda sd, cfg: shrink.heads(sd, None, amount, gqa=gqa, config=cfg))
    if gqa == "groups":
        assert r.loadable and r.config["num_attention_heads"] == 8 - amount
    else:   # transformers wants hidden_size % num_attention_heads == 0 (32 % 6): apply_shrink
        assert not r.loadable and r.config["litecomp_sizes"]["heads"] == [6, 6]


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_heads_need_apply_shrink(kind):
    r = equivalent(kind, lambda sd, cfg: shrink.heads(sd, None, 1, config=cfg))
    assert not r.loadable and r.config["litecomp_sizes"]["heads"] == [3, 3]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_hidden_rms_exact(kind):
    r = equivalent(kind, lambda sd, cfg: shrink.hidden(sd, None, 0.25, config=cfg))
    assert r.loadable and r.config["hidden_size"] == 24


@pytest.mark.parametrize("kind", list(MODELS))
def test_vocab(kind):
    m, sd, cfg, cls = make(kind)
    keep = np.array(sorted({0, 1, 2, 5, 9, 17, 33, 40, 63}))
    r = shrink.vocab(sd, None, keep, config=cfg)
    small = cls(cls.config_class.from_dict(r.config)).eval()
    load_numpy_state_dict(small, r.state_dict, strict=False)
    ids = torch.as_tensor(keep[np.random.default_rng(3).integers(0, len(keep), (2, 6))])
    want = out(m, ids)
    got = out(small, torch.as_tensor(r.id_map[ids.numpy()]))
    if kind != "bert":          # logits over the kept ids
        want = want[..., torch.as_tensor(keep)]
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_llama_from_pretrained_with_the_new_config(tmp_path):
    from litecomp import save
    m, sd, cfg, cls = make("llama")
    r = shrink.heads(shrink.ffn(sd, None, 0.5, round_to=8, config=cfg), None, 4)
    save(r.state_dict, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(r.config))
    small = cls.from_pretrained(str(tmp_path)).eval()
    assert small.config.intermediate_size == 24 and small.config.num_key_value_heads == 1
    ids = torch.randint(0, 64, (1, 5))
    ref, _, _, _ = make("llama")   # both removals masked in the original shapes
    step1 = shrink.ffn(sd, None, 0.5, round_to=8, config=cfg)
    load_numpy_state_dict(ref, r.masked(step1.masked(sd)), strict=False)
    torch.testing.assert_close(out(small, ids), out(ref, ids), atol=ATOL, rtol=0)


def test_gqa_errors_name_the_problem():
    _, sd, cfg, _ = make("llama")
    with pytest.raises(ArgumentError, match="breaks GQA"):
        shrink.heads(sd, None, 3, config=cfg)


def test_numpy_state_dict_carries_the_models_config():
    """A Hugging Face model's state dict through litecomp.torch.numpy_state_dict carries
    model.config: the family and the GQA head counts come with it, untold."""
    from litecomp.torch import numpy_state_dict
    m, sd, cfg, _ = make("llama")
    msd = numpy_state_dict(m)
    assert msd.config["num_key_value_heads"] == 2 and msd.config["model_type"] == "llama"
    assert np.shares_memory(msd["model.embed_tokens.weight"],
                            to_numpy(m.model.embed_tokens.weight))        # views
    r = shrink.heads(msd, None, 4)
    assert (r.arch.name, r.config["num_attention_heads"], r.config["num_key_value_heads"]) == \
        ("llama", 4, 1)
    want = shrink.heads(sd, "llama", 4, config=cfg)
    for k in want.kept:
        np.testing.assert_array_equal(r.kept[k], want.kept[k])


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_hidden_layernorm_families_equal_masked_with_kept_channel_norms(kind):
    """BERT / GPT-2: the smaller model (apply_shrink: transformers has no per-tensor hidden
    size) equals the masked one whose LayerNorms normalize over the kept channels."""
    m, sd, cfg, cls = make(kind)
    r = shrink.hidden(sd, None, 0.25, config=cfg)
    assert not r.loadable and len(r.kept["hidden"]) == 24
    ref, _, _, _ = make(kind)
    load_numpy_state_dict(ref, r.masked(sd), strict=False)
    for name, mod in list(ref.named_modules()):
        if isinstance(mod, torch.nn.LayerNorm):
            owner, _, attr = name.rpartition(".")
            setattr(ref.get_submodule(owner), attr, KeptLayerNorm(mod, r.kept["hidden"]))
    small, _, _, _ = make(kind)
    apply_shrink(small, r)
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    want = out(ref, ids)
    if kind == "bert":       # the hidden states: the removed channels are gone
        want = want[..., torch.as_tensor(r.kept["hidden"])]
    assert (out(m, ids) - out(ref, ids)).abs().max() > 1e-3     # the removal matters
    torch.testing.assert_close(out(small, ids), want, atol=ATOL, rtol=0)
