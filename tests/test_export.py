"""litecomp.export without torch: GGUF model files (read back with gguf's GGUFReader, every
tensor dequantized through gguf.quants to litecomp's own dequantization), imatrix files,
compressed-tensors folders read back by litecomp, and the checks that run before any output
is written."""

import json
import os

import numpy as np
import pytest

import litecomp
from litecomp import export
from litecomp.export import ct, ggufmodel
from litecomp.quant import gguf as lg

gguf = pytest.importorskip("gguf")


def tiny_llama(rng, tied=False, heads=4, kv=2, hidden=256, inter=512, layers=2, vocab=320):
    cfg = {"model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "max_position_embeddings": 128, "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "vocab_size": vocab, "bos_token_id": 1, "eos_token_id": 2,
           "torch_dtype": "float32"}
    hd = hidden // heads
    w = lambda *s: (rng.standard_normal(s) * 0.05).astype(np.float32)  # noqa: E731
    sd = {"model.embed_tokens.weight": w(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd.update({p + "input_layernorm.weight": np.ones(hidden, np.float32),
                   p + "self_attn.q_proj.weight": w(heads * hd, hidden),
                   p + "self_attn.k_proj.weight": w(kv * hd, hidden),
                   p + "self_attn.v_proj.weight": w(kv * hd, hidden),
                   p + "self_attn.o_proj.weight": w(hidden, heads * hd),
                   p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
                   p + "mlp.gate_proj.weight": w(inter, hidden),
                   p + "mlp.up_proj.weight": w(inter, hidden),
                   p + "mlp.down_proj.weight": w(hidden, inter)})
    sd["model.norm.weight"] = np.ones(hidden, np.float32)
    if not tied:
        sd["lm_head.weight"] = w(vocab, hidden)
    return sd, cfg


def field(r, key):
    f = r.fields[key]
    v = f.parts[f.data[0]] if f.data else None
    return bytes(v).decode() if f.types[0] == gguf.GGUFValueType.STRING else v.tolist()[0]


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q2_K", "Q3_K", "Q4_K",
                                   "Q5_K", "Q6_K"])
def test_llama_gguf_reads_back(tmp_path, rng, qtype):
    sd, cfg = tiny_llama(rng)
    kinds = export.gguf(sd, tmp_path / "m.gguf", config=cfg, qtype=qtype)
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "general.architecture") == "llama"
    assert field(r, "llama.block_count") == 2 and field(r, "llama.attention.head_count_kv") == 2
    assert field(r, "llama.embedding_length") == 256 and field(r, "llama.vocab_size") == 320
    assert field(r, "tokenizer.ggml.model") == "no_vocab"
    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) == set(kinds) and len(kinds) == len(sd)
    back = {g: s for s, g in ggufmodel.llama_names(sd).items()}
    for name, t in tensors.items():
        src = sd[back[name]]
        assert t.tensor_type.name == kinds[name]
        assert tuple(int(v) for v in t.shape[::-1]) == src.shape   # ne is innermost first
        if kinds[name] == "F32" and src.ndim == 1:
            np.testing.assert_array_equal(t.data, src)
            continue
        want = src
        if ".attn_q." in name or ".attn_k." in name:
            want = ggufmodel.permute_qk(src, 4 if ".attn_q." in name else 2)
        data = np.asarray(t.data)
        if kinds[name] in lg.FORMATS:
            ours = lg.dequantize(lg.quantize(want, kinds[name]), kinds[name])
            theirs = gguf.quants.dequantize(data, t.tensor_type)
            np.testing.assert_array_equal(theirs.reshape(ours.shape), ours)
        else:
            np.testing.assert_array_equal(data.astype(np.float32).reshape(want.shape),
                                          want.astype(data.dtype).astype(np.float32))


def test_qk_permutation_is_llama_cpp_s():
    # the converter's rule, written out for one head pair: rows (h, half, i) -> (h, i, half)
    w = np.arange(16, dtype=np.float32).reshape(8, 2)
    p = ggufmodel.permute_qk(w, 2)
    assert p[:, 0].tolist() == [0, 4, 2, 6, 8, 12, 10, 14]


def test_tokenizer_json_gpt2_and_llama_styles(tmp_path, rng):
    sd, cfg = tiny_llama(rng, vocab=8, hidden=64, heads=2, kv=2, inter=64, layers=1)
    tok = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "c": 3},
                     "merges": ["a b"]},
           "added_tokens": [{"id": 4, "content": "<s>", "special": True}]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok))
    export.gguf(sd, tmp_path / "m.gguf", config=cfg, qtype="F32",
                tokenizer=tmp_path / "tokenizer.json")
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    toks = r.fields["tokenizer.ggml.tokens"]
    names = [bytes(toks.parts[i]).decode() for i in toks.data]
    assert names[:5] == ["a", "b", "ab", "c", "<s>"] and len(names) == 8
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in r.fields["tokenizer.ggml.token_type"].data]
    assert types[:5] == [1, 1, 1, 1, 3] and types[5:] == [5, 5, 5]
    assert field(r, "tokenizer.ggml.bos_token_id") == 1
    tok["model"]["byte_fallback"] = True
    tok["model"]["vocab"]["<0x41>"] = 5
    (tmp_path / "t2.json").write_text(json.dumps(tok))
    export.gguf(sd, tmp_path / "m2.gguf", config=cfg, qtype="F32", tokenizer=tmp_path / "t2.json")
    r = gguf.GGUFReader(str(tmp_path / "m2.gguf"))
    assert field(r, "tokenizer.ggml.model") == "llama"
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0])
             for i in r.fields["tokenizer.ggml.token_type"].data]
    assert types[5] == 6  # byte token


def test_seed_decoder_under_its_own_architecture(tmp_path):
    sd = litecomp.examples.tiny_decoder_lm()
    kinds = export.gguf(sd, tmp_path / "d.gguf", config={"heads": 4}, qtype="Q8_0")
    r = gguf.GGUFReader(str(tmp_path / "d.gguf"))
    assert field(r, "general.architecture") == "litecomp"
    assert field(r, "litecomp.block_count") == 2 and field(r, "litecomp.attention.head_count") == 4
    assert kinds["blk.0.attn_qkv.weight"] == "Q8_0" and kinds["output.bias"] == "F32"
    t = {t.name: t for t in r.tensors}["blk.1.ffn_up.weight"]
    w = sd["transformer_decoder.layers.1.linear1.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type),
                                  lg.dequantize(lg.quantize(w, "Q8_0"), "Q8_0"))


def test_seed_decoder_head_count_is_never_guessed(tmp_path):
    """nn.TransformerDecoder's state dict does not hold nhead: without a config it is
    refused (nothing written), with a StateDict its .config gives it."""
    sd = litecomp.examples.tiny_decoder_lm()
    with pytest.raises(litecomp.ArgumentError, match="head count"):
        export.gguf(dict(sd), tmp_path / "d.gguf", qtype="Q8_0")
    assert not (tmp_path / "d.gguf").exists()
    from litecomp.arch import StateDict
    export.gguf(StateDict(dict(sd), config={"heads": 2}), tmp_path / "d.gguf", qtype="Q8_0")
    r = gguf.GGUFReader(str(tmp_path / "d.gguf"))
    assert field(r, "litecomp.attention.head_count") == 2


def test_imatrix_file_round_trip_and_use(tmp_path, rng):
    from litecomp.prune.scores import ActivationStats
    sd, cfg = tiny_llama(rng, layers=1)
    st = ActivationStats(256)
    st.update(rng.standard_normal((64, 256)).astype(np.float32) * np.linspace(0.1, 3, 256))
    export.imatrix.save(tmp_path / "im.gguf", {"blk.0.attn_q.weight": st}, datasets=["x"],
                        chunk_count=1, chunk_size=64)
    r = gguf.GGUFReader(str(tmp_path / "im.gguf"))
    assert field(r, "general.type") == "imatrix" and field(r, "imatrix.chunk_size") == 64
    im = export.imatrix.load(tmp_path / "im.gguf")
    np.testing.assert_allclose(im["blk.0.attn_q.weight"], st.mean_sq, rtol=1e-6)  # f32 store
    export.gguf(sd, tmp_path / "m.gguf", config=cfg, qtype="Q4_K", imatrix=tmp_path / "im.gguf")
    t = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "m.gguf")).tensors}
    w = ggufmodel.permute_qk(sd["model.layers.0.self_attn.q_proj.weight"], 4)
    np.testing.assert_array_equal(np.asarray(t["blk.0.attn_q.weight"].data).reshape(-1),
                                  lg.quantize(w, "Q4_K", imatrix=im["blk.0.attn_q.weight"])
                                  .reshape(-1))


def test_bad_input_writes_nothing(tmp_path, rng):
    sd, cfg = tiny_llama(rng, layers=1)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(litecomp.FormatError, match="tokenizer"):
        export.gguf(sd, tmp_path / "m.gguf", config=cfg, tokenizer=tmp_path / "bad.json")
    with pytest.raises(litecomp.ArgumentError, match="config"):
        export.gguf(sd, tmp_path / "m.gguf")
    with pytest.raises(litecomp.ArgumentError, match="qtype"):
        export.gguf(sd, tmp_path / "m.gguf", config=cfg, qtype="Q7_K")
    with pytest.raises(litecomp.ArgumentError, match="no place"):
        export.gguf({**sd, "model.extra.weight": np.ones((2, 2), np.float32)},
                    tmp_path / "m.gguf", config=cfg)
    with pytest.raises(litecomp.ShapeError, match="imatrix"):
        export.gguf(sd, tmp_path / "m.gguf", config=cfg, qtype="Q4_K",
                    imatrix={"blk.0.attn_q.weight": np.ones(3)})
    with pytest.raises(litecomp.ArgumentError, match="3-bit"):
        export.compressed_tensors(sd, tmp_path / "ct", config=cfg, recipe={
            "method": "rtn", "bits": 3, "activations": "int8"})
    with pytest.raises(litecomp.ArgumentError, match="match none"):
        export.compressed_tensors(sd, tmp_path / "ct", config=cfg, recipe={
            "method": "rtn", "bits": 4, "group_size": 64, "targets": ["attn.*"]})
    with pytest.raises(litecomp.ArgumentError, match="Linear"):
        export.compressed_tensors({**sd, "model.table": np.ones((4, 4), np.float32)},
                                  tmp_path / "ct", config=cfg,
                                  recipe={"method": "rtn", "bits": 4, "targets": ["*table"]})
    with pytest.raises(litecomp.ShapeError, match="group_size"):
        export.compressed_tensors(sd, tmp_path / "ct", config=cfg,
                                  recipe={"method": "rtn", "bits": 4, "group_size": 100})
    assert sorted(os.listdir(tmp_path)) == ["bad.json"]


@pytest.mark.parametrize("recipe", [
    {"method": "rtn", "bits": 4, "group_size": 64},
    {"method": "rtn", "bits": 4, "group_size": 32, "scheme": "affine"},
    {"method": "rtn", "bits": 3, "axis": 0, "scheme": "affine"},
    {"method": "rtn", "bits": 8, "axis": 0},
    {"method": "rtn", "bits": 8, "axis": 0, "activations": "int8"},
    {"method": "fp8", "axis": 0},
    {"method": "fp8", "axis": None, "activations": "fp8"},
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_compressed_tensors_read_back_is_litecomp_dequantization(tmp_path, rng, recipe, dtype):
    sd, cfg = tiny_llama(rng, layers=1)
    cfg["torch_dtype"] = dtype
    sd = {k: litecomp.quant.cast(v, dtype) for k, v in sd.items()}
    recipe = {**recipe, "targets": ["re:.*_proj\\.weight"]}
    mods = export.compressed_tensors(sd, tmp_path / "ct", config=cfg, recipe=recipe)
    assert len(mods) == 7
    back, conf = export.read_compressed_tensors(tmp_path / "ct")
    qc = conf["quantization_config"]
    assert qc["quant_method"] == "compressed-tensors" and qc["quantization_status"] == "compressed"
    stage = litecomp.recipe.stages(recipe)[0]
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        want = ct.quantize_for(sd[name], stage, dtype).dequantize(litecomp.dtypes.dtype_of(dtype))
        np.testing.assert_array_equal(np.asarray(back[name]).view(np.uint8),
                                      np.asarray(want).view(np.uint8))
    np.testing.assert_array_equal(back["model.norm.weight"], sd["model.norm.weight"])
    files = set(os.listdir(tmp_path / "ct"))
    assert {"config.json", "model.safetensors"} <= files
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_pack_layout_is_compressed_tensors():
    # element j of a row in bits 4 * (j % 8) of word j // 8, u = q + 8
    w = np.array([np.arange(-8, 8, dtype=np.float32).repeat(2)]) * 0.5
    q = litecomp.quant.quantize(w, 4, group_size=32)
    enc = ct.encode_tensor("p", q, "float32", "pack-quantized")
    u = np.asarray(q.codes()).ravel()
    words = enc["p.weight_packed"].view(np.uint32).ravel()
    manual = [sum(int(u[8 * k + j]) << (4 * j) for j in range(8)) for k in range(4)]
    assert words.tolist() == manual and enc["p.weight_shape"].tolist() == [1, 32]


def test_module_docstring_examples_run():
    import doctest
    import importlib
    for name in ("litecomp.export.imatrix", "litecomp.io.stream", "litecomp.quant.fp8",
                 "litecomp.testing"):
        res = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS
                              | doctest.NORMALIZE_WHITESPACE)
        assert res.failed == 0 and res.attempted > 0, name
