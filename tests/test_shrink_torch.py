"""Shrunk models in torch compute what the masked originals compute: the seed's
nn.TransformerDecoder (litecomp.torch.DecoderLM), apply_shrink, LowRankLinear."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import litecomp  # noqa: E402
from litecomp import lowrank, shrink  # noqa: E402
from litecomp.errors import ArgumentError  # noqa: E402
from litecomp.torch import (DecoderLM, LowRankLinear, apply_lowrank, apply_shrink,  # noqa: E402
                            load_numpy_state_dict)
from litecomp.torch.shrink import Attention  # noqa: E402
from shrink_cases import KeptLayerNorm  # noqa: E402

CFG = {"vocab": 1000, "d_model": 64, "heads": 4, "layers": 2, "ffn": 128}
# float32 logits of ~1e1; the measured largest difference was 0 to 4e-6 -> 2e-5 (5x)
ATOL = 2e-5


def model_sd(seed=0):
    """The tiny decoder with random biases and norms, so that no coupling hides behind zeros."""
    sd = litecomp.examples.tiny_decoder_lm(seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in sd.items():
        if k.endswith("bias") or "norm" in k:
            sd[k] = (rng.standard_normal(v.shape) * 0.2 + ("norm" in k and k.endswith("weight"))
                     ).astype(np.float32)
    return sd


def build(cfg, sd):
    m = DecoderLM(**cfg).eval()
    load_numpy_state_dict(m, sd)   # strict=True
    return m


def run(m, x):
    with torch.no_grad():
        return m(x)


X = torch.randint(0, 1000, (3, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("step", [
    lambda sd: shrink.ffn(sd, "decoder_lm", 0.5, config=CFG),
    lambda sd: shrink.ffn(sd, "decoder_lm", 0.4, granularity="global", config=CFG),
    lambda sd: shrink.heads(sd, "decoder_lm", 1, config=CFG),
    lambda sd: shrink.heads(sd, "decoder_lm", 0.5, attention="multihead_attn", config=CFG),
    lambda sd: shrink.heads(sd, "decoder_lm", 0.5, granularity="global", config=CFG),
], ids=["ffn", "ffn-global", "heads", "cross-heads", "heads-global"])
def test_decoder_shrunk_equals_masked(step):
    sd = model_sd()
    r = step(sd)
    orig = run(build(CFG, sd), X)
    masked = run(build(CFG, r.masked(sd)), X)
    small = run(build(r.config, r.state_dict), X)
    assert (orig - masked).abs().max() > 1e-2          # the removal matters
    torch.testing.assert_close(small, masked, atol=ATOL, rtol=0)
    assert shrink.count_parameters(r.state_dict) < shrink.count_parameters(sd)


def test_decoder_hidden_equals_masked_with_kept_channel_norms():
    sd = model_sd()
    r = shrink.hidden(sd, "decoder_lm", 0.5, config=CFG)
    ref = build(CFG, r.masked(sd))
    for layer in ref.transformer_decoder.layers:
        for n in ("norm1", "norm2", "norm3"):
            setattr(layer, n, KeptLayerNorm(getattr(layer, n), r.kept["hidden"]))
    small = build(r.config, r.state_dict)
    assert isinstance(small.transformer_decoder.layers[0].self_attn, Attention)
    torch.testing.assert_close(run(small, X), run(ref, X), atol=ATOL, rtol=0)


def test_decoder_vocab_same_logits_on_kept_ids():
    sd = model_sd()
    keep = np.sort(np.random.default_rng(1).choice(1000, 100, replace=False))
    r = shrink.vocab(sd, "decoder_lm", keep, config=CFG)
    x = torch.as_tensor(keep[np.random.default_rng(2).integers(0, 100, (2, 11))])
    orig = run(build(CFG, sd), x)[..., torch.as_tensor(keep)]
    small = run(build(r.config, r.state_dict), torch.as_tensor(r.id_map[x.numpy()]))
    torch.testing.assert_close(small, orig, atol=ATOL, rtol=0)


def test_decoder_chain_per_layer_sizes_load_strict():
    sd = model_sd()
    r = shrink.heads(shrink.ffn(sd, "decoder_lm", 0.3, granularity="global", config=CFG),
                     None, 0.5, granularity="global")
    # global: 77 of the 256 units go, unevenly, so the decoder gets one FFN width per layer
    assert r.config["ffn"] == [90, 89] and r.config["heads"] == 2
    m = build(r.config, r.state_dict)
    assert sum(p.numel() for p in m.parameters()) == shrink.count_parameters(r.state_dict)


def test_attention_matches_multihead_attention():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    mine = Attention(32, 4, 8).eval()
    mine.load_state_dict(mha.state_dict())
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    kp = torch.zeros(2, 7, dtype=torch.bool)
    kp[1, 5:] = True
    for args in ({}, {"key_padding_mask": kp}):
        with torch.no_grad():
            torch.testing.assert_close(mine(q, kv, kv, **args)[0], mha(q, kv, kv, **args)[0],
                                       atol=1e-5, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(mine(q, q, q, attn_mask=mask)[0],
                                   mha(q, q, q, attn_mask=mask)[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(mine(q, q, q, attn_mask=mask.isinf())[0],
                                   mha(q, q, q, attn_mask=mask.isinf())[0], atol=1e-5, rtol=0)


def test_apply_shrink_rebuilds_a_stock_model():
    sd = model_sd()
    r = shrink.heads(shrink.ffn(sd, "decoder_lm", 0.5, granularity="global", config=CFG),
                     None, 1)
    m = build(CFG, sd)
    apply_shrink(m, r)          # MultiheadAttention -> Attention, linear1/2 resized, loaded
    ref = build(CFG, r.masked(shrink.ffn(sd, "decoder_lm", 0.5, granularity="global",
                                         config=CFG).masked(sd)))
    torch.testing.assert_close(run(m, X), run(ref, X), atol=ATOL, rtol=0)
    assert m.transformer_decoder.layers[0].linear1.out_features == \
        len(r.kept["layers.0.ffn"])
    with pytest.raises(ArgumentError, match="not tensors of the model"):
        apply_shrink(nn.Linear(2, 2), r)


def test_lowrank_linear_and_apply_lowrank():
    sd = model_sd()
    new, rows = lowrank.lowrank_state_dict(sd, targets="*.linear[12].weight", rank=16)
    assert all(r.rank == 16 for r in rows) and len(rows) == 4
    m = build(CFG, sd)
    apply_lowrank(m, new)
    lin = m.transformer_decoder.layers[0].linear1
    assert isinstance(lin, LowRankLinear) and lin.rank == 16
    w = sd["transformer_decoder.layers.0.linear1.weight"]
    f = lowrank.svd(w, 16)
    x = torch.randn(4, 64)
    with torch.no_grad():
        want = x @ torch.as_tensor(f.a @ f.b).T + torch.as_tensor(
            sd["transformer_decoder.layers.0.linear1.bias"])
        torch.testing.assert_close(lin(x), want, atol=1e-4, rtol=0)
    full = LowRankLinear.from_factors(f.a, f.b, sd["transformer_decoder.layers.0.linear1.bias"])
    with torch.no_grad():
        torch.testing.assert_close(full(x), want, atol=1e-4, rtol=0)
    with pytest.raises(ArgumentError, match="factorizes no nn.Linear"):
        apply_lowrank(build(CFG, sd), sd)


def _out_proj_inputs(sd, x):
    """The reference: every attention block of the decoder rebuilt as litecomp's Attention
    (same parameters; its forward calls out_proj as a module), a plain pre-hook on each
    out_proj, and Wanda's sqrt(mean x^2) per input feature of what it saw."""
    m = build(CFG, sd)
    seen = {}
    for i, layer in enumerate(m.transformer_decoder.layers):
        for attr in ("self_attn", "multihead_attn"):
            mine = Attention(64, 4, 16).eval()
            mine.load_state_dict(getattr(layer, attr).state_dict())
            setattr(layer, attr, mine)
            name = f"transformer_decoder.layers.{i}.{attr}.out_proj"
            mine.out_proj.register_forward_pre_hook(
                lambda mod, inp, name=name: seen.setdefault(name, []).append(inp[0]))
    run(m, x)
    return {k: torch.cat([t.reshape(-1, 64) for t in v]).double().pow(2).mean(0).sqrt()
            .numpy() for k, v in seen.items()}


def test_activation_scores_of_decoder_heads_through_capture():
    """activation_stats (litecomp.torch.capture) sees the input of every
    nn.MultiheadAttention's out_proj -- which MultiheadAttention applies without calling the
    module -- so heads are scored by their outputs: the per-feature statistic equals the one
    a plain hook sees in the same model built from modules that do call out_proj, and the
    head removed is the one whose head_dim block carries the least."""
    from litecomp.torch import activation_stats
    sd = model_sd()
    xs = [torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(s))
          for s in range(3)]
    stats = activation_stats(build(CFG, sd), xs)
    ref = _out_proj_inputs(sd, torch.cat(xs))
    assert len(ref) == 4
    for name, want in ref.items():
        # float32 attention in two different implementations: measured 6e-7 relative
        np.testing.assert_allclose(stats[name].norm, want, rtol=5e-6)
        assert stats[name].count == 3 * 2 * 8
    for attn in ("self_attn", "multihead_attn"):
        r = shrink.heads(sd, "decoder_lm", 1, attention=attn, criterion="activation",
                         activations=stats, config=CFG)
        for i in range(2):
            per_head = ref[f"transformer_decoder.layers.{i}.{attn}.out_proj"] \
                .reshape(4, 16).sum(1)
            low = np.sort(per_head)
            assert low[1] - low[0] > 1e-3 * low[0]             # the choice is not a near tie
            np.testing.assert_array_equal(r.kept[f"layers.{i}.{attn}.heads"],
                                          np.sort(np.argsort(per_head)[1:]))
        # and the smaller model is still the masked one
        torch.testing.assert_close(run(build(r.config, r.state_dict), X),
                                   run(build(CFG, r.masked(sd)), X), atol=ATOL, rtol=0)
    r = shrink.ffn(sd, "decoder_lm", 0.5, criterion="activation", activations=stats,
                   config=CFG)
    st = stats["transformer_decoder.layers.0.linear2"].norm
    np.testing.assert_array_equal(r.kept["layers.0.ffn"], np.sort(np.argsort(st)[64:]))
    with pytest.raises(ArgumentError, match=r"no statistic for layers.0.self_attn.heads; give "
                                            r"one for 'transformer_decoder.layers.0.self_attn"
                                            r".out_proj'.*activation_stats"):
        shrink.heads(sd, "decoder_lm", 1, criterion="activation", config=CFG,
                     activations={"transformer_decoder.layers.0.linear2": st})

def test_decoder_lm_config_and_numpy_state_dict():
    """DecoderLM knows its sizes (.config); numpy_state_dict hands them to shrink, so its
    heads shrink untold -- the same cut as with config= -- and the result loads back."""
    from litecomp.torch import numpy_state_dict
    m = build(CFG, model_sd())
    assert m.config == CFG
    msd = numpy_state_dict(m)
    assert msd.config == CFG and type(msd).__name__ == "StateDict"
    r = shrink.heads(msd, None, 1)
    want = shrink.heads(dict(msd), "decoder_lm", 1, config=CFG)
    assert r.config == want.config and r.config["heads"] == 3
    for k in want.kept:
        np.testing.assert_array_equal(r.kept[k], want.kept[k])
    small = build(r.config, r.state_dict)
    assert small.config["heads"] == 3 and small.config["head_dim"] == 16
    assert numpy_state_dict(small).config == small.config
    with pytest.raises(ArgumentError, match=r"'heads'.*is missing.*--config '\{\"heads\": N\}'"):
        shrink.heads(dict(msd), None, 1)


def test_apply_shrink_and_apply_lowrank_leave_the_model_unchanged_on_error():
    """A result that does not fit the model raises and leaves it as it was: same modules,
    same parameter objects, same outputs."""
    from litecomp.shrink import ShrinkResult
    sd = model_sd()
    r = shrink.heads(shrink.ffn(sd, "decoder_lm", 0.5, config=CFG), None, 1)
    bad = dict(r.state_dict)
    del bad["fc.bias"]               # every module is rebuilt, then the load would fail
    m = build(CFG, sd)
    want = run(m, X)
    before = {k: (id(v), tuple(v.shape)) for k, v in m.state_dict(keep_vars=True).items()}
    kinds = [type(x).__name__ for x in m.modules()]
    with pytest.raises(litecomp.errors.ShapeError, match=r"no \['fc.bias'\].*nothing was changed"):
        apply_shrink(m, ShrinkResult(bad, r.config, r.kept, r.arch))
    assert {k: (id(v), tuple(v.shape)) for k, v in m.state_dict(keep_vars=True).items()} == before
    assert [type(x).__name__ for x in m.modules()] == kinds
    assert m.transformer_decoder.layers[0].linear1.out_features == 128
    torch.testing.assert_close(run(m, X), want, atol=0, rtol=0)
    lr, _ = lowrank.lowrank_state_dict(sd, targets=["*linear1.weight"], rank=8)
    lr["fc.weight"] = lr["fc.weight"][:10]
    with pytest.raises(litecomp.errors.ShapeError, match="'fc.weight' is .*nothing was changed"):
        apply_lowrank(m, lr)
    assert [type(x).__name__ for x in m.modules()] == kinds
    torch.testing.assert_close(run(m, X), want, atol=0, rtol=0)
    assert run(apply_shrink(m, r), X).shape == want.shape     # the real one still applies
