"""litecomp.arch and litecomp.shrink without torch: descriptions, sizes, scores against a
plain NumPy computation, amount rules, GQA, vocabulary, token counting, bad input."""

import numpy as np
import pytest

import litecomp
from litecomp import arch, shrink
from litecomp.errors import ArgumentError, DTypeError, ShapeError
from litecomp.reference.shrink import token_counts as ref_token_counts

DEC = {"heads": 4}


def tiny():
    return litecomp.examples.tiny_decoder_lm()


def llama_sd(layers=2, d=32, heads=8, kv=2, hd=4, ffn=24, vocab=50, bias=False, seed=0):
    """A LLaMA/Qwen2-style state dict by name and shape (what LlamaForCausalLM saves)."""
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {"model.embed_tokens.weight": r(vocab, d)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = r(heads * hd, d)
        sd[p + "self_attn.k_proj.weight"] = r(kv * hd, d)
        sd[p + "self_attn.v_proj.weight"] = r(kv * hd, d)
        if bias:
            sd[p + "self_attn.q_proj.bias"] = r(heads * hd)
            sd[p + "self_attn.k_proj.bias"] = r(kv * hd)
            sd[p + "self_attn.v_proj.bias"] = r(kv * hd)
        sd[p + "self_attn.o_proj.weight"] = r(d, heads * hd)
        sd[p + "mlp.gate_proj.weight"] = r(ffn, d)
        sd[p + "mlp.up_proj.weight"] = r(ffn, d)
        sd[p + "mlp.down_proj.weight"] = r(d, ffn)
        sd[p + "input_layernorm.weight"] = r(d)
        sd[p + "post_attention_layernorm.weight"] = r(d)
    sd["model.norm.weight"] = r(d)
    sd["lm_head.weight"] = r(vocab, d)
    cfg = {"model_type": "llama", "vocab_size": vocab, "hidden_size": d,
           "intermediate_size": ffn, "num_attention_heads": heads, "num_key_value_heads": kv,
           "head_dim": hd, "num_hidden_layers": layers, "rms_norm_eps": 1e-6,
           "bos_token_id": 1, "eos_token_id": 2}
    return sd, cfg


# ------------------------------------------------------------------ arch
def test_parse_slice_forms_and_errors():
    assert arch.parse_slice("a.b:1") == arch.Slice("a.b", 1)
    assert arch.parse_slice("x:0[2/3]?") == arch.Slice("x", 0, 2, 3, True)
    for bad in ("a.b", "a:x", "a:0[3/3]", "a:0[1/0]"):
        with pytest.raises(ArgumentError, match="slice"):
            arch.parse_slice(bad)


@pytest.mark.parametrize("name,sd_cfg", [
    ("decoder_lm", lambda: (tiny(), None)),
    ("llama", lambda: llama_sd()),
])
def test_detect(name, sd_cfg):
    sd, cfg = sd_cfg()
    a = arch.detect(sd, cfg)
    assert a.name == name and a.num_layers(sd) == 2


def test_detect_prefixes_and_unknown():
    sd, cfg = llama_sd()
    bare = {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}
    a = arch.detect(bare)
    assert a.name == "llama" and a.prefix == ""
    assert arch.detect(sd).prefix == "model."
    with pytest.raises(ArgumentError, match="matches no known architecture"):
        arch.detect({"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(ArgumentError, match="unknown architecture"):
        arch.get("resnet")


def test_user_arch_in_a_few_lines():
    # a two-layer MLP "model": blocks.{i}.fc_in / fc_out, with an embedding and head
    rng = np.random.default_rng(1)
    sd = {"emb.weight": rng.standard_normal((10, 6)).astype(np.float32)}
    for i in range(2):
        sd[f"blocks.{i}.fc_in.weight"] = rng.standard_normal((12, 6)).astype(np.float32)
        sd[f"blocks.{i}.fc_in.bias"] = rng.standard_normal(12).astype(np.float32)
        sd[f"blocks.{i}.fc_out.weight"] = rng.standard_normal((6, 12)).astype(np.float32)
    sd["head.weight"] = rng.standard_normal((10, 6)).astype(np.float32)
    mine = arch.Arch(
        name="mlp", layer="{p}blocks.{i}",
        ffn=arch.Coupling(produce=["fc_in.weight:0", "fc_in.bias:0"], consume=["fc_out.weight:1"]),
        attention=(), hidden=arch.Coupling(produce=["emb.weight:1"], consume=["head.weight:1"]),
        vocab=["emb.weight:0", "head.weight:0"], keys={"ffn": "ffn"})
    r = shrink.ffn(sd, mine, 0.25)
    assert r.state_dict["blocks.1.fc_in.weight"].shape == (9, 6)
    assert r.state_dict["blocks.1.fc_out.weight"].shape == (6, 9)
    k = r.kept["layers.1.ffn"]
    np.testing.assert_array_equal(r.state_dict["blocks.1.fc_out.weight"],
                                  sd["blocks.1.fc_out.weight"][:, k])


# ------------------------------------------------------------------ ffn
def _ref_ffn_scores(sd, i, criterion):
    p = f"transformer_decoder.layers.{i}."
    w1, b1, w2 = (sd[p + n].astype(np.float64) for n in ("linear1.weight", "linear1.bias",
                                                          "linear2.weight"))
    if criterion == "l1":
        return np.abs(w1).sum(1) + np.abs(b1) + np.abs(w2).sum(0)
    return np.sqrt((w1 ** 2).sum(1) + b1 ** 2 + (w2 ** 2).sum(0))


@pytest.mark.parametrize("criterion", ["l1", "l2"])
def test_ffn_keeps_the_highest_scores_and_cuts_every_coupled_tensor(criterion):
    sd = tiny()
    r = shrink.ffn(sd, "decoder_lm", 0.25, criterion=criterion)
    for i in range(2):
        s = _ref_ffn_scores(sd, i, criterion)
        want = np.sort(np.argsort(-s, kind="stable")[:96])
        np.testing.assert_array_equal(r.kept[f"layers.{i}.ffn"], want)
        p = f"transformer_decoder.layers.{i}."
        np.testing.assert_array_equal(r.state_dict[p + "linear1.weight"], sd[p + "linear1.weight"][want])
        np.testing.assert_array_equal(r.state_dict[p + "linear1.bias"], sd[p + "linear1.bias"][want])
        np.testing.assert_array_equal(r.state_dict[p + "linear2.weight"], sd[p + "linear2.weight"][:, want])
    assert r.state_dict["embed.weight"] is sd["embed.weight"]  # untouched tensors shared
    assert r.config["ffn"] == 96
    assert sd["transformer_decoder.layers.0.linear1.weight"].shape == (128, 64)  # input intact


def test_ffn_amount_rules_round_to_and_global():
    sd = tiny()
    assert shrink.ffn(sd, None, 1).config["ffn"] == 127            # an int is a count
    assert shrink.ffn(sd, None, 0.5).config["ffn"] == 64           # a float a fraction
    assert shrink.ffn(sd, None, 0.3, round_to=8).config["ffn"] == 96   # 90 -> 96
    g = shrink.ffn(sd, None, 0.5, granularity="global")
    sizes = [len(g.kept[f"layers.{i}.ffn"]) for i in range(2)]
    assert sum(sizes) == 128
    allsc = np.concatenate([_ref_ffn_scores(sd, i, "l2") for i in range(2)])
    thr = np.sort(allsc)[128]
    assert all((_ref_ffn_scores(sd, i, "l2")[g.kept[f"layers.{i}.ffn"]] >= thr).all()
               for i in range(2))
    cfg = g.config["ffn"]
    assert cfg == sizes if sizes[0] != sizes[1] else cfg == sizes[0]
    with pytest.raises(ArgumentError, match="removes all 128"):
        shrink.ffn(sd, None, 1.0)
    with pytest.raises(ArgumentError, match="amount"):
        shrink.ffn(sd, None, 1.5)
    with pytest.raises(ArgumentError, match="granularity"):
        shrink.ffn(sd, None, 0.5, granularity="tensor")
    with pytest.raises(ArgumentError, match="criterion"):
        shrink.ffn(sd, None, 0.5, criterion="l3")


def test_ffn_targets_select_layers():
    sd = tiny()
    r = shrink.ffn(sd, None, 0.5, targets="*.layers.1")
    assert r.config["ffn"] == [128, 64] and "layers.0.ffn" not in r.kept


def test_taylor_and_activation_scores():
    sd = tiny()
    rng = np.random.default_rng(3)
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in sd.items()}
    r = shrink.ffn(sd, None, 0.5, criterion="taylor", grads=grads)
    p = "transformer_decoder.layers.0."
    s = sum(np.abs(sd[p + n] * grads[p + n]).reshape(128, -1).sum(1)
            for n in ("linear1.weight", "linear1.bias")) + \
        np.abs(sd[p + "linear2.weight"] * grads[p + "linear2.weight"]).sum(0)
    np.testing.assert_array_equal(r.kept["layers.0.ffn"], np.sort(np.argsort(-s, kind="stable")[:64]))
    act = {f"transformer_decoder.layers.{i}.linear2": np.arange(128.0)[::-1] for i in range(2)}
    r = shrink.ffn(sd, None, 0.25, criterion="activation", activations=act)
    np.testing.assert_array_equal(r.kept["layers.0.ffn"], np.arange(96))
    with pytest.raises(ArgumentError, match="linear2"):
        shrink.ffn(sd, None, 0.25, criterion="activation", activations={"x": np.ones(3)})
    with pytest.raises(ArgumentError, match="gradient"):
        shrink.ffn(sd, None, 0.25, criterion="taylor", grads={})


def test_the_example_decoders_carry_their_config_and_nothing_is_guessed():
    """A state dict cannot hold a head count. litecomp's examples carry theirs (a StateDict's
    .config); a plain dict of the very same tensors and shapes is not assumed to have it."""
    sd = tiny()
    assert isinstance(sd, dict) and sd.config == litecomp.examples.TINY_DECODER_LM
    assert arch.detect(sd).config == litecomp.examples.TINY_DECODER_LM
    assert arch.detect(sd, {"heads": 2}).config == {"heads": 2}     # config= wins
    plain = dict(sd)                                  # the same arrays, no config
    assert arch.config_of(plain) is None and arch.detect(plain).config is None
    assert shrink.sizes(plain)["attention"]["self_attn"]["heads"] is None
    assert arch.config_of(sd.copy()) == sd.config
    import pickle
    back = pickle.loads(pickle.dumps(sd))             # pickles as the plain dict it is
    assert type(back) is dict and list(back) == list(sd)
    assert arch.detect(*llama_sd()).config == llama_sd()[1]


# ------------------------------------------------------------------ heads
def test_heads_decoder_packed_qkv():
    sd = tiny()
    r = shrink.heads(sd, "decoder_lm", 1, config=DEC)
    assert r.config["heads"] == 3 and r.config["head_dim"] == 16
    p = "transformer_decoder.layers.0.self_attn."
    kept = r.kept["layers.0.self_attn.heads"]
    rows = np.concatenate([np.arange(h * 16, h * 16 + 16) for h in kept])
    w = sd[p + "in_proj_weight"]
    want = np.concatenate([w[:64][rows], w[64:128][rows], w[128:][rows]])
    np.testing.assert_array_equal(r.state_dict[p + "in_proj_weight"], want)
    np.testing.assert_array_equal(r.state_dict[p + "out_proj.weight"], sd[p + "out_proj.weight"][:, rows])
    # the example carries its head count (4 for the tiny one): the same cut, untold
    carried = shrink.heads(sd, "decoder_lm", 1)
    assert carried.config["heads"] == 3
    np.testing.assert_array_equal(carried.kept["layers.0.self_attn.heads"], kept)
    # a plain state dict (what torch.save(model.state_dict()) holds) must be told, whatever
    # its shapes: the error names the key and the command line's flag
    with pytest.raises(ArgumentError, match=r"'heads', the head count of decoder_lm's self_attn,"
                                            r" is missing.*config=\{'heads': N\} \(command "
                                            r"line: --config '\{\"heads\": N\}'\)"):
        shrink.heads(dict(sd), "decoder_lm", 1)
    np.testing.assert_array_equal(
        shrink.heads(dict(sd), None, 1, config={"heads": 4}).kept["layers.0.self_attn.heads"],
        kept)
    with pytest.raises(ShapeError, match="heads of"):
        shrink.heads(sd, "decoder_lm", 1, config={"heads": 5})
    only_self = shrink.heads(sd, "decoder_lm", 2, config=DEC, attention="self_attn")
    assert only_self.config["heads"] == 2 and only_self.config["cross_heads"] == 4


def test_heads_gqa_groups_and_query_modes():
    sd, cfg = llama_sd()   # 8 query heads, 2 kv heads (groups of 4), head_dim 4
    r = shrink.heads(sd, None, 4, config=cfg)
    assert r.config["num_attention_heads"] == 4 and r.config["num_key_value_heads"] == 1
    kv = r.kept["layers.0.self_attn.kv_heads"]
    q = r.kept["layers.0.self_attn.heads"]
    np.testing.assert_array_equal(q, np.arange(kv[0] * 4, kv[0] * 4 + 4))
    with pytest.raises(ArgumentError, match="breaks GQA.*multiple of 4"):
        shrink.heads(sd, None, 2, config=cfg)
    with pytest.raises(ArgumentError, match="breaks GQA"):
        shrink.heads(sd, None, 0.25, config=cfg)             # 2 of 8
    r = shrink.heads(sd, None, 2, config=cfg, gqa="query")
    # 32 % 6 != 0, which transformers refuses: the new counts go to litecomp_sizes
    assert r.config["litecomp_sizes"]["heads"] == [6, 6] and r.config["num_key_value_heads"] == 2
    q = r.kept["layers.1.self_attn.heads"]
    assert (q < 4).sum() == 3 and (q >= 4).sum() == 3        # one per group
    with pytest.raises(ArgumentError, match="breaks GQA.*multiple of 2"):
        shrink.heads(sd, None, 3, config=cfg, gqa="query")
    with pytest.raises(ArgumentError, match="gqa"):
        shrink.heads(sd, None, 2, config=cfg, gqa="kv")


# ------------------------------------------------------------------ hidden
def test_hidden_cuts_the_residual_stream_and_rescales_rms_norms():
    sd, cfg = llama_sd()
    r = shrink.hidden(sd, None, 0.25, config=cfg)
    k = r.kept["hidden"]
    assert len(k) == 24 and r.config["hidden_size"] == 24 and r.config["head_dim"] == 4
    np.testing.assert_array_equal(r.state_dict["model.embed_tokens.weight"],
                                  sd["model.embed_tokens.weight"][:, k])
    np.testing.assert_array_equal(r.state_dict["model.layers.0.self_attn.q_proj.weight"],
                                  sd["model.layers.0.self_attn.q_proj.weight"][:, k])
    np.testing.assert_array_equal(r.state_dict["model.layers.0.mlp.down_proj.weight"],
                                  sd["model.layers.0.mlp.down_proj.weight"][k])
    np.testing.assert_allclose(r.state_dict["model.norm.weight"],
                               sd["model.norm.weight"][k] * np.sqrt(32 / 24), rtol=1e-6)
    assert r.config["rms_norm_eps"] == pytest.approx(1e-6 * 32 / 24)
    dec = shrink.hidden(tiny(), None, 0.5, config=DEC)
    assert dec.config["d_model"] == 32 and dec.config["head_dim"] == 16
    assert dec.state_dict["transformer_decoder.layers.0.self_attn.in_proj_weight"].shape == (192, 32)


# ------------------------------------------------------------------ vocabulary
def test_vocab_rows_order_and_id_map():
    sd = tiny()
    keep = np.array([5, 0, 999, 17])
    r = shrink.vocab(sd, None, keep)
    np.testing.assert_array_equal(r.state_dict["embed.weight"], sd["embed.weight"][keep])
    np.testing.assert_array_equal(r.state_dict["fc.weight"], sd["fc.weight"][keep])
    np.testing.assert_array_equal(r.state_dict["fc.bias"], sd["fc.bias"][keep])
    assert r.id_map[999] == 2 and r.id_map[1] == -1 and r.config["vocab"] == 4
    sd2, cfg = llama_sd()
    r = shrink.vocab(sd2, None, [0, 2, 1, 7], config=cfg)
    assert r.config["eos_token_id"] == 1 and r.config["bos_token_id"] == 2
    with pytest.raises(ArgumentError, match="eos_token_id 2 is not among the kept"):
        shrink.vocab(sd2, None, [0, 1, 7], config=cfg)


@pytest.mark.parametrize("bad,err,match", [
    ([1, 1000], ArgumentError, "out of range"), ([-1], ArgumentError, "out of range"),
    ([3, 3], ArgumentError, "more than once"), ([], ShapeError, "non-empty"),
    (["a"], DTypeError, "integers"),
])
def test_vocab_bad_ids(bad, err, match):
    with pytest.raises(err, match=match):
        shrink.vocab(tiny(), None, np.array(bad) if bad else np.zeros(0, np.int64))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16, np.int32,
                                   np.uint32, np.int64, np.uint64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_token_counts_matches_bincount(dtype, threads):
    rng = np.random.default_rng(0)
    hi = min(120, np.iinfo(dtype).max)
    batches = [rng.integers(0, hi, size=n).astype(dtype) for n in (0, 7, 300_001, 5)]
    batches.append(rng.integers(0, hi, size=(30, 40)).astype(dtype)[:, ::3])  # strided
    with litecomp.threads(threads):
        got = shrink.token_counts(batches, vocab=hi)
    np.testing.assert_array_equal(got, ref_token_counts(batches, hi))
    grown = shrink.token_counts(batches)   # vocab from the largest id
    np.testing.assert_array_equal(grown, ref_token_counts(batches, hi)[:grown.size])


def test_token_counts_streaming_and_errors():
    counts = np.zeros(10, np.int64)
    shrink.token_counts([np.array([1, 2])], counts=counts)
    shrink.token_counts([np.array([2])], counts=counts)
    assert counts[:3].tolist() == [0, 1, 2]
    big = np.zeros(400_000, np.int64)
    big[333_333] = 10
    before = counts.copy()
    with pytest.raises(ArgumentError, match="id 10 at position 333333"):
        shrink.token_counts([big], counts=counts)
    np.testing.assert_array_equal(counts, before)      # unchanged on error
    with pytest.raises(ArgumentError, match="id -3"):
        shrink.token_counts([np.array([1, -3])], vocab=10)
    with pytest.raises(DTypeError, match="integers"):
        shrink.token_counts([np.array([1.0])], vocab=10)
    assert shrink.top_ids(np.array([5, 0, 7, 5, 1]), 3).tolist() == [0, 2, 3]
    assert shrink.top_ids(np.array([5, 0, 7, 5, 1])).tolist() == [0, 2, 3, 4]


# ------------------------------------------------------------------ bad input
def test_state_dict_that_does_not_match():
    sd = tiny()
    broken = dict(sd)
    del broken["transformer_decoder.layers.1.linear2.weight"]
    with pytest.raises(ShapeError, match="linear2.weight.*does not match"):
        shrink.ffn(broken, "decoder_lm", 0.5)
    odd = dict(sd)
    odd["transformer_decoder.layers.0.linear1.bias"] = np.zeros(100, np.float32)
    with pytest.raises(ShapeError, match="linear1.bias.*100"):
        shrink.ffn(odd, "decoder_lm", 0.5)
    gap = {k: v for k, v in sd.items() if ".layers.0." not in k}
    with pytest.raises(ShapeError, match=r"layers \[0\]"):
        shrink.ffn(gap, "decoder_lm", 0.5)
    with pytest.raises(ShapeError):
        sd2, cfg = llama_sd()
        shrink.ffn(sd, "llama", 0.5)


def test_recipe_runner_chains_steps():
    sd = tiny()
    r = shrink.shrink_state_dict(sd, [
        {"method": "shrink_vocab", "keep_ids": list(range(0, 1000, 10))},
        {"method": "shrink_ffn", "sparsity": 0.5, "round_to": 8},
        {"method": "shrink_heads", "amount": 1},
        {"method": "lowrank", "rank": 8, "targets": ["*.linear1.weight"]},
    ], config=DEC)
    assert r.config == {"vocab": 100, "d_model": 64, "heads": 3, "layers": 2, "ffn": 64,
                        "head_dim": 16}
    assert "transformer_decoder.layers.0.linear1.first.weight" in r.state_dict
    assert set(r.kept) >= {"vocab", "layers.0.ffn", "layers.1.self_attn.heads"}
    with pytest.raises(ArgumentError, match="not shrink"):
        shrink.shrink_state_dict(sd, {"method": "rtn", "bits": 4})
    with pytest.raises(ArgumentError, match="unknown key"):
        shrink.shrink_state_dict(sd, {"method": "shrink_ffn", "fraction": 0.5})
