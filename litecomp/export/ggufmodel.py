"""GGUF model files that llama.cpp loads: a Hugging Face LLaMA-style state dict + config ->
``general.architecture = llama`` with llama.cpp's tensor names and keys, the Q/K row
permutation its converter applies, and a tokenizer (from ``tokenizer.json``, or
``no_vocab``); litecomp's example decoder (``litecomp.examples.decoder_lm``) under its own
architecture name, ``litecomp``.

Weights are quantized with ``litecomp.quant.gguf.quantize`` (every legacy type and the
K-quants, with an importance matrix for the K-quants), written one tensor at a time: tensor
infos come from shapes alone, so the header is written first and each tensor is read,
converted and written in turn (peak memory about two tensors).
"""

import os
import re

import numpy as np

from .. import dtypes as _dt
from ..errors import ArgumentError, FormatError, ShapeError
from ..quant import gguf as _q
from .ct import _infos, load_config, read_json

__all__ = ["gguf", "gguf_file", "QTYPES", "llama_names"]

QTYPES = ("F32", "F16", "BF16") + tuple(_q.FORMATS)
_FILE_TYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
              "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32}

_LLAMA_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_LLAMA_TOP = {"model.embed_tokens.weight": "token_embd.weight",
              "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
_DECODER_LAYER = {
    "self_attn.in_proj_weight": "attn_qkv.weight", "self_attn.in_proj_bias": "attn_qkv.bias",
    "self_attn.out_proj.weight": "attn_output.weight",
    "self_attn.out_proj.bias": "attn_output.bias",
    "multihead_attn.in_proj_weight": "cross_attn_qkv.weight",
    "multihead_attn.in_proj_bias": "cross_attn_qkv.bias",
    "multihead_attn.out_proj.weight": "cross_attn_output.weight",
    "multihead_attn.out_proj.bias": "cross_attn_output.bias",
    "linear1.weight": "ffn_up.weight", "linear1.bias": "ffn_up.bias",
    "linear2.weight": "ffn_down.weight", "linear2.bias": "ffn_down.bias",
    "norm1.weight": "attn_norm.weight", "norm1.bias": "attn_norm.bias",
    "norm2.weight": "cross_attn_norm.weight", "norm2.bias": "cross_attn_norm.bias",
    "norm3.weight": "ffn_norm.weight", "norm3.bias": "ffn_norm.bias",
}
_DECODER_TOP = {"positional_encoding": "position_embd.weight", "embed.weight": "token_embd.weight",
                "fc.weight": "output.weight", "fc.bias": "output.bias"}
_LAYER = re.compile(r"(?:model\.layers|transformer_decoder\.layers)\.(\d+)\.(.+)")
_SKIP = re.compile(r".*\.rotary_emb\.inv_freq")


def llama_names(names, arch="llama"):
    """{source name: GGUF name} for a state dict's tensors (unknown names raise)."""
    top, layer = (_LLAMA_TOP, _LLAMA_LAYER) if arch == "llama" else (_DECODER_TOP, _DECODER_LAYER)
    out = {}
    for n in names:
        if _SKIP.fullmatch(n):
            continue
        if n in top:
            out[n] = top[n]
            continue
        m = _LAYER.fullmatch(n)
        if m and m.group(2) in layer:
            out[n] = f"blk.{m.group(1)}.{layer[m.group(2)]}"
            continue
        raise ArgumentError(f"state_dict: tensor {n!r} has no place in a GGUF {arch} model "
                            f"file (known: {', '.join(list(top)[:3])}, and per layer "
                            f"{', '.join(list(layer)[:3])}, ...)")
    return out


def _arch_of(infos, cfg):
    names = list(infos)
    if any(n.startswith("transformer_decoder.layers.") for n in names) or "embed.weight" in infos:
        return "litecomp"
    model_type = (cfg or {}).get("model_type")
    if any(n.startswith("model.layers.") for n in names) or model_type in ("llama", "mistral"):
        return "llama"
    raise ArgumentError("state_dict: neither a LLaMA-style model (model.layers.N.self_attn."
                        "q_proj.weight, ...) nor litecomp's example decoder")


def permute_qk(w, n_head):
    """llama.cpp's converter's row order for Q and K: within each head, the two rotary
    halves interleaved (w.reshape(n_head, 2, d / n_head / 2, in).swapaxes(1, 2))."""
    w = np.asarray(w)
    return np.ascontiguousarray(
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2)
        .reshape(w.shape))


# ------------------------------------------------------------------ metadata
def _req(cfg, key, what):
    v = cfg.get(key)
    if v is None:
        raise ArgumentError(f"config: {what} needs {key!r}")
    return v


def _llama_keys(cfg, infos):
    if cfg is None:
        raise ArgumentError("config: a LLaMA GGUF file needs the model's config (config.json "
                            "or its folder, or a dict)")
    heads = int(_req(cfg, "num_attention_heads", "a LLaMA model"))
    hidden = int(_req(cfg, "hidden_size", "a LLaMA model"))
    kv = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    vocab = infos.get("model.embed_tokens.weight", (None, (cfg.get("vocab_size"),)))[1][0]
    keys = [
        ("uint32", "llama.context_length", int(cfg.get("max_position_embeddings", 2048))),
        ("uint32", "llama.embedding_length", hidden),
        ("uint32", "llama.block_count", int(_req(cfg, "num_hidden_layers", "a LLaMA model"))),
        ("uint32", "llama.feed_forward_length", int(_req(cfg, "intermediate_size",
                                                          "a LLaMA model"))),
        ("uint32", "llama.rope.dimension_count", head_dim),
        ("uint32", "llama.attention.head_count", heads),
        ("uint32", "llama.attention.head_count_kv", kv),
        ("float32", "llama.attention.layer_norm_rms_epsilon", float(cfg.get("rms_norm_eps",
                                                                            1e-6))),
        ("float32", "llama.rope.freq_base", float(cfg.get("rope_theta", 10000.0))),
        ("uint32", "llama.vocab_size", int(vocab)),
    ]
    if head_dim != hidden // heads:
        keys += [("uint32", "llama.attention.key_length", head_dim),
                 ("uint32", "llama.attention.value_length", head_dim)]
    return keys, heads, kv


def _decoder_keys(cfg, infos):
    cfg = cfg or {}
    vocab, d = infos["embed.weight"][1]
    layers = len({n.split(".")[2] for n in infos if n.startswith("transformer_decoder.layers.")})
    ffn = infos.get("transformer_decoder.layers.0.linear1.weight", (None, (4 * d,)))[1][0]
    heads = cfg.get("num_attention_heads", cfg.get("heads"))
    if heads is None:  # a state dict of nn.TransformerDecoder does not record nhead
        raise ArgumentError("config: the head count of a litecomp decoder is not in its "
                            "tensors; pass config={'heads': N} (or a litecomp.arch.StateDict "
                            "whose .config has it)")
    heads = int(heads)
    if d % heads:
        raise ArgumentError(f"config: {heads} heads do not divide d_model {d}")
    return [("uint32", "litecomp.context_length", int(cfg.get("max_position_embeddings", 512))),
            ("uint32", "litecomp.embedding_length", int(d)),
            ("uint32", "litecomp.block_count", layers),
            ("uint32", "litecomp.feed_forward_length", int(ffn)),
            ("uint32", "litecomp.attention.head_count", heads),
            ("float32", "litecomp.attention.layer_norm_epsilon", float(cfg.get("layer_norm_eps",
                                                                               1e-5))),
            ("uint32", "litecomp.vocab_size", int(vocab))]


def tokenizer_keys(tokenizer, cfg, vocab_size):
    """GGUF tokenizer keys from a tokenizer.json (path or folder): BPE with byte fallback
    (SentencePiece converted) as ``llama``, byte-level BPE as ``gpt2`` with merges; None ->
    ``no_vocab``.  A file that does not parse raises FormatError."""
    if tokenizer is None:
        return [("string", "tokenizer.ggml.model", "no_vocab")]
    path, tj = read_json(tokenizer, "tokenizer.json", "tokenizer")
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
        raise FormatError(f"tokenizer: {path!r} has no model.vocab (not a Hugging Face "
                          "tokenizer.json)")
    if model.get("type") != "BPE":
        raise FormatError(f"tokenizer: model type {model.get('type')!r} is not supported "
                          "(BPE tokenizers are)")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", []) if isinstance(t, dict)
             and "content" in t and "id" in t}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(max(vocab.values()) + 1, vocab_size or 0)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # UNUSED
    for tok, i in vocab.items():
        if not isinstance(i, int) or not 0 <= i < n:
            raise FormatError(f"tokenizer: token {tok!r} has a bad id {i!r}")
        tokens[i] = tok
        types[i] = 1
    byte_tok = re.compile(r"<0x[0-9A-Fa-f]{2}>")
    for tok, i in vocab.items():
        if tok in added:
            types[i] = 3 if added[tok].get("special") else 4
        elif model.get("byte_fallback") and byte_tok.fullmatch(tok):
            types[i] = 6
    if model.get("unk_token") in vocab:
        types[vocab[model["unk_token"]]] = 2
    keys = []
    if model.get("byte_fallback"):
        keys += [("string", "tokenizer.ggml.model", "llama"),
                 ("array", "tokenizer.ggml.tokens", tokens),
                 ("array", "tokenizer.ggml.scores", [float(-i) for i in range(n)]),
                 ("array", "tokenizer.ggml.token_type", types)]
    else:
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        keys += [("string", "tokenizer.ggml.model", "gpt2"),
                 ("string", "tokenizer.ggml.pre", "default"),
                 ("array", "tokenizer.ggml.tokens", tokens),
                 ("array", "tokenizer.ggml.token_type", types),
                 ("array", "tokenizer.ggml.merges", merges)]
    for key, cfg_key in (("bos", "bos_token_id"), ("eos", "eos_token_id"),
                         ("padding", "pad_token_id")):
        v = (cfg or {}).get(cfg_key)
        if isinstance(v, list):
            v = v[0] if v else None
        if isinstance(v, int):
            keys.append(("uint32", f"tokenizer.ggml.{key}_token_id", v))
    if model.get("unk_token") in vocab:
        keys.append(("uint32", "tokenizer.ggml.unknown_token_id", vocab[model["unk_token"]]))
    return keys


# ------------------------------------------------------------------ tensors
def _stored_type(gname, shape, qtype):
    """The GGUF type of one tensor: 1-D tensors (norms, biases) F32; qtype where the rows
    divide into its blocks; otherwise Q8_0 (rows a multiple of 32) or F16."""
    if len(shape) < 2:
        return "F32"
    if qtype in ("F32", "F16", "BF16"):
        return qtype
    blk = _q.FORMATS[qtype][1]
    if shape[-1] % blk == 0:
        return qtype
    return "Q8_0" if shape[-1] % 32 == 0 else "F16"


def _convert(a, kind, im=None):
    from ..quant.core import cast
    if kind == "F32":
        return np.ascontiguousarray(a, np.float32)
    if kind in ("F16", "BF16"):
        return cast(a, np.float16 if kind == "F16" else _dt.bfloat16)
    a2 = a.reshape(-1, a.shape[-1])
    return _q.quantize(a2, kind, imatrix=im if kind in _q.K_QUANTS else None)


def _byte_shape(shape, kind):
    if kind in ("F32", "F16", "BF16"):
        return tuple(shape)
    _t, blk, nbytes = _q.FORMATS[kind]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return (rows, shape[-1] // blk * nbytes)


def available() -> bool:
    """Whether the gguf package (the extra GGUF files are written through) is installed."""
    import importlib.util
    return importlib.util.find_spec("gguf") is not None


def require_gguf():
    """Raise, before any work, when GGUF files cannot be written here."""
    if not available():
        raise ArgumentError("format: 'gguf' writes through the gguf package, which is not "
                            "installed (pip install gguf)")


def gguf_file(path, arch, fill, tensors, progress=None):
    """Write a GGUF file with gguf's GGUFWriter, streaming: ``fill(writer)`` adds the keys
    and every tensor's info (in order); ``tensors`` yields (name, make) and each ``make()``
    gives that tensor's array, written at once.  A temporary file is renamed into place
    when complete; on any error it is removed."""
    import gguf as _g
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArgumentError(f"path: folder {folder} does not exist")
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    w = _g.GGUFWriter(tmp, arch)
    try:
        fill(w)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, make in tensors:
            a = make()
            w.write_tensor_data(a)
            if progress is not None:
                progress(name, a.nbytes)
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def gguf(state_dict, path, *, config=None, qtype="Q8_0", tokenizer=None, imatrix=None,
         name=None, quantize=None, progress=None, on_tensor=None):
    """Write a complete GGUF model file that llama.cpp loads.

    ``state_dict``: a Hugging Face LLaMA-style state dict (model.embed_tokens.weight,
    model.layers.N.self_attn.q_proj.weight, ..., lm_head.weight) with ``config`` (dict,
    config.json or its folder), or litecomp's example decoder; a lazy ``litecomp.open``
    checkpoint is read one tensor at a time.  ``qtype``: F32, F16, BF16, Q4_0, Q4_1, Q5_0,
    Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K or Q6_K for the 2-D weights (1-D tensors stay F32;
    rows that do not divide into qtype's blocks fall back to Q8_0 or F16).  ``tokenizer``:
    a tokenizer.json (or the folder holding one; the config folder's is used by default),
    else ``no_vocab``.  ``imatrix``: importance weights for the K-quants, a GGUF imatrix
    file or {name: weights} (GGUF or source names).  Everything is checked before the file
    is started; it appears only when complete.  ``quantize``: the source names to store as
    ``qtype`` (default every 2-D weight; the others stay F32).  ``progress(gguf name,
    bytes)`` and ``on_tensor(source name, array, stored array, stored type)`` are called
    after each tensor.  Returns {GGUF name: stored type}.
    """
    if qtype not in QTYPES:
        raise ArgumentError(f"qtype: {qtype!r} is not one of {', '.join(QTYPES)}")
    require_gguf()
    cfg = load_config(config)
    if cfg is None and isinstance(getattr(state_dict, "config", None), dict):
        cfg = dict(state_dict.config)   # a litecomp.arch.StateDict carries its config
    infos = _infos(state_dict)
    arch = _arch_of(infos, cfg)
    mapping = llama_names(infos, arch)
    if arch == "llama":
        keys, heads, kv = _llama_keys(cfg, infos)
    else:
        keys, heads, kv = _decoder_keys(cfg, infos), None, None
    if tokenizer is None and config is not None and not isinstance(config, dict):
        folder = os.fspath(config) if os.path.isdir(os.fspath(config)) else \
            os.path.dirname(os.path.abspath(os.fspath(config)))
        if os.path.isfile(os.path.join(folder, "tokenizer.json")):
            tokenizer = os.path.join(folder, "tokenizer.json")
    vocab = infos.get("model.embed_tokens.weight", infos.get("embed.weight",
                                                             (None, (0,))))[1][0]
    keys += tokenizer_keys(tokenizer, cfg, vocab)
    ims = _imatrix_for(imatrix, mapping, infos)
    plan = []
    for src, gname in mapping.items():
        dt, shape = infos[src]
        if _dt.name_of(np.dtype(dt)) not in _dt.WEIGHT_DTYPES:
            raise ArgumentError(f"state_dict: {src!r} has dtype {dt}, not a float weight")
        kind = _stored_type(gname, shape, qtype)
        if quantize is not None and src not in quantize and len(shape) >= 2:
            kind = "F32"
        plan.append((src, gname, tuple(shape), kind))
    if arch == "llama":
        for src, gname, shape, _k in plan:
            n = heads if gname.endswith("attn_q.weight") or gname.endswith("attn_q.bias") else kv
            if re.search(r"attn_[qk]\.(weight|bias)$", gname) and shape[0] % (2 * n):
                raise ShapeError(f"{src}: {shape[0]} rows do not split into {n} heads of "
                                 "rotary halves")

    def fill(w):
        w.add_name(name or (cfg or {}).get("_name_or_path") or arch)
        w.add_file_type(_FILE_TYPE.get(qtype, 7))
        w.add_quantization_version(2)
        for kind, key, value in keys:
            if kind == "uint32":
                w.add_uint32(key, value)
            elif kind == "float32":
                w.add_float32(key, value)
            elif kind == "string":
                w.add_string(key, value)
            else:
                w.add_array(key, value)
        for src, gname, shape, kind in plan:
            dt = np.float32 if kind == "F32" else np.float16 if kind == "F16" else np.uint8
            if kind == "BF16":
                w.add_tensor_info(gname, _byte_shape(shape, kind), np.dtype(np.uint16),
                                  int(np.prod(shape)) * 2, raw_dtype=_g().BF16)
                continue
            bshape = _byte_shape(shape, kind)
            raw = None if kind in ("F32", "F16") else getattr(_g(), kind)
            nbytes = int(np.prod(bshape, dtype=np.int64)) * np.dtype(dt).itemsize
            w.add_tensor_info(gname, bshape, np.dtype(dt), nbytes, raw_dtype=raw)

    def make(src, gname, kind):
        def run():
            a = state_dict[src]
            if arch == "llama" and re.search(r"attn_[qk]\.(weight|bias)$", gname):
                a = permute_qk(a, heads if ".attn_q." in gname else kv)
            out = _convert(np.asarray(a), kind, ims.get(gname))
            if on_tensor is not None:
                on_tensor(src, a, out, kind)
            if kind == "BF16":
                out = out.view(np.uint16)
            return out
        return run
    gguf_file(path, arch, fill, ((g, make(s, g, k)) for s, g, _sh, k in plan), progress)
    return {g: k for _s, g, _sh, k in plan}


def _g():
    import gguf as _gg
    return _gg.GGMLQuantizationType


def _imatrix_for(imatrix, mapping, infos):
    """{GGUF name: float32 weights} from an imatrix file or dict, checked against the
    tensors' row lengths."""
    if imatrix is None:
        return {}
    if isinstance(imatrix, (str, os.PathLike)):
        from .imatrix import load
        imatrix = load(imatrix)
    if not isinstance(imatrix, dict):
        raise ArgumentError("imatrix: expected a GGUF imatrix file or a dict name -> weights")
    back = {g: s for s, g in mapping.items()}
    out = {}
    for k, v in imatrix.items():
        g = mapping.get(k, k)
        if g not in back:
            continue  # llama.cpp ignores entries of tensors a model does not have
        cols = infos[back[g]][1][-1]
        v = np.asarray(v, np.float32).reshape(-1)
        if v.size != cols:
            raise ShapeError(f"imatrix: {k!r} has {v.size} weights; the tensor has {cols} "
                             "columns")
        out[g] = v
    return out
