"""Architectures described once, as data: which tensors couple along which dimension.

Structured shrinking (``litecomp.shrink``) removes whole units -- FFN neurons, attention
heads, residual channels, vocabulary ids -- from a state dict, without tracing a model.  What
it needs to know about a model is which slices of which tensors belong to one unit; an
``Arch`` says exactly that, in a few lines, and nothing else.

A *slice* is written ``"name:axis"``: the tensor ``name`` along ``axis`` (one index per
unit position).  ``"name:axis[p/n]"`` is part ``p`` of ``n`` equal blocks along the axis
(packed q|k|v tensors such as ``in_proj_weight`` or GPT-2's ``c_attn``), and a trailing ``?``
marks a tensor that may be absent (biases, a tied head).  Inside ``ffn`` and
``attention`` names are relative to one layer (``layer`` with ``{i}``); in ``hidden`` and
``vocab`` they are model-level, ``{p}`` is the model's prefix (``"model."`` or nothing) and
``{layer}`` expands to every layer.

Each coupling lists what *produces* the units (the rows of the projections that compute
them, biases, norms, embedding columns) and what *consumes* them (the input columns of the
projections that read them); both are cut the same way, and the consumers' input activations
score the units for ``criterion="activation"``.

>>> from litecomp import arch, examples
>>> a = arch.detect(examples.tiny_decoder_lm(), {"heads": 4})
>>> a.name, a.num_layers(examples.tiny_decoder_lm())
('decoder_lm', 2)
>>> arch.parse_slice("self_attn.in_proj_weight:0[1/3]")
Slice(name='self_attn.in_proj_weight', axis=0, part=1, parts=3, optional=False)

A new architecture is one ``Arch(...)`` call (see docs/shrink.md) and, optionally,
``arch.register(a)`` so that ``detect`` knows it.
"""

import re
from dataclasses import dataclass, field, replace
from typing import Optional

from .errors import ArgumentError, ShapeError

__all__ = ["Slice", "Coupling", "Attention", "Arch", "StateDict", "config_of", "config_path",
           "save_config", "parse_slice", "detect", "get", "register", "BUILTIN"]


class StateDict(dict):
    """A state dict -- a plain ``dict`` of name -> array -- that carries its model's config:
    the sizes no tensor shows, such as an ``nn.TransformerDecoder``'s head count.
    ``litecomp.examples``' models and ``litecomp.torch.numpy_state_dict`` return one;
    ``detect`` and the ``litecomp.shrink`` functions read ``.config`` when they are given no
    ``config=``.  Copies made with ``dict(...)`` or ``{**sd}`` are plain dicts again.

    >>> import copy
    >>> sd = StateDict({"w": 1}, config={"heads": 4})
    >>> sd.config, sd.copy().config, copy.deepcopy(sd).config, type(dict(sd)).__name__
    ({'heads': 4}, {'heads': 4}, {'heads': 4}, 'dict')
    """

    def __init__(self, tensors=(), config=None):
        super().__init__(tensors)
        if config is not None and not isinstance(config, dict):
            raise ArgumentError(f"config: expected a dict, got {type(config).__name__}")
        self.config = dict(config) if config is not None else None

    def copy(self) -> "StateDict":
        return StateDict(self, self.config)

    def __reduce__(self):  # pickles (and torch.save) as the plain dict it is
        return dict, (dict(self),)

    def __deepcopy__(self, memo):
        import copy
        return StateDict({k: copy.deepcopy(v, memo) for k, v in self.items()},
                         copy.deepcopy(self.config, memo))


def config_of(state_dict):
    """The config a state dict carries (``StateDict.config``, a ``ShrinkResult``'s), or
    None."""
    cfg = getattr(state_dict, "config", None)
    return dict(cfg) if isinstance(cfg, dict) else None


def config_path(model_path) -> str:
    """Where litecomp keeps a checkpoint's config: ``DIR/config.json`` for a folder, else
    the checkpoint's name + ``.config.json`` (``small.safetensors`` -> ``small.config.json``;
    ``model.pth`` and ``model.safetensors`` share ``model.config.json``)."""
    import os
    p = os.fspath(model_path)
    if p.endswith(os.sep) or os.path.isdir(p):
        return os.path.join(p, "config.json")
    return os.path.splitext(p)[0] + ".config.json"


def save_config(config, path) -> str:
    """Write a config dict as JSON (sorted keys, atomically); returns ``path``."""
    import json
    from .io.atomic import atomic_write
    with atomic_write(path) as f:
        f.write((json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return path

_SLICE = re.compile(r"^(?P<name>[^:\[\]?]+):(?P<axis>-?\d+)"
                    r"(?:\[(?P<part>\d+)/(?P<parts>\d+)\])?(?P<opt>\?)?$")


@dataclass(frozen=True)
class Slice:
    """One tensor's share of a unit group: ``name`` along ``axis``, part ``part`` of
    ``parts`` equal blocks along it; ``optional`` tensors may be missing."""
    name: str
    axis: int
    part: int = 0
    parts: int = 1
    optional: bool = False

    def format(self, **kw) -> "Slice":
        return replace(self, name=self.name.format(**kw))


def parse_slice(spec) -> Slice:
    """A ``Slice`` from its text form ``"name:axis[p/n]?"`` (a Slice passes through)."""
    if isinstance(spec, Slice):
        return spec
    if not isinstance(spec, str):
        raise ArgumentError(f"slice: expected 'name:axis' text or a Slice, got {spec!r}")
    m = _SLICE.match(spec.strip())
    if not m:
        raise ArgumentError(f"slice: {spec!r} is not 'name:axis', 'name:axis[part/parts]' "
                            "or either with a trailing '?'")
    parts = int(m["parts"] or 1)
    part = int(m["part"] or 0)
    if parts < 1 or not 0 <= part < parts:
        raise ArgumentError(f"slice: {spec!r} has part {part} of {parts}")
    return Slice(m["name"], int(m["axis"]), part, parts, bool(m["opt"]))


def _slices(items) -> tuple:
    if isinstance(items, (str, Slice)):
        items = [items]
    return tuple(parse_slice(s) for s in items)


@dataclass(frozen=True)
class Coupling:
    """Tensors cut together: ``produce`` computes the units, ``consume`` reads them."""
    produce: tuple = ()
    consume: tuple = ()

    def __post_init__(self):
        object.__setattr__(self, "produce", _slices(self.produce))
        object.__setattr__(self, "consume", _slices(self.consume))

    @property
    def slices(self) -> tuple:
        return self.produce + self.consume


@dataclass(frozen=True)
class Attention:
    """One attention block of a layer.  ``q`` (query heads), ``k`` / ``v`` (key/value heads,
    fewer with GQA) and ``o`` (the output projection's input, one block per query head) are
    slices in units of ``head_dim``.  ``heads_key`` / ``kv_heads_key`` name the config
    entries holding the head counts."""
    name: str
    q: tuple
    k: tuple
    v: tuple
    o: tuple
    heads_key: str = "heads"
    kv_heads_key: Optional[str] = None

    def __post_init__(self):
        for f in ("q", "k", "v", "o"):
            object.__setattr__(self, f, _slices(getattr(self, f)))


@dataclass(frozen=True)
class Arch:
    """A model family as data.  ``keys`` maps litecomp's size words (vocab, hidden, ffn,
    heads, kv_heads, head_dim, layers, norm_eps) to the family's config names; ``norm`` is
    "layer" (LayerNorm) or "rms" (RMSNorm: removing hidden channels rescales the norms so the
    function stays exactly that of the masked model); ``prefixes`` are the roots ``{p}`` may
    stand for (``"model."`` for a CausalLM, ``""`` for the bare model); ``config`` the bound
    config (``detect`` fills it)."""
    name: str
    layer: str
    ffn: Coupling
    attention: tuple
    hidden: Coupling
    vocab: tuple
    keys: dict
    norm: str = "layer"
    norms: tuple = ()
    prefixes: tuple = ("",)
    markers: tuple = ()
    prefix: str = ""
    config: Optional[dict] = None
    defaults: dict = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "vocab", _slices(self.vocab))
        object.__setattr__(self, "attention", tuple(self.attention))
        if self.norm not in ("layer", "rms"):
            raise ArgumentError(f"norm: {self.norm!r} is not 'layer' or 'rms'")

    # ---------------------------------------------------------------- binding
    def bind(self, config=None, prefix=None) -> "Arch":
        """This arch with a config dict (sizes the state dict cannot show) and a prefix."""
        if config is not None and not isinstance(config, dict):
            raise ArgumentError(f"config: expected a dict (a config.json's content), got "
                                f"{type(config).__name__}")
        return replace(self, config=dict(config) if config is not None else self.config,
                       prefix=self.prefix if prefix is None else prefix)

    def get(self, word, default=None):
        """A size from the bound config by litecomp's word ("heads", "ffn", ...)."""
        key = self.keys.get(word)
        cfg = self.config or {}
        if key is not None and cfg.get(key) is not None:
            return cfg[key]
        return self.defaults.get(word, default)

    # ---------------------------------------------------------------- names
    def layer_prefix(self, i) -> str:
        return self.layer.format(p=self.prefix, i=i)

    def in_layer(self, s: Slice, i) -> Slice:
        key = (self.layer, self.prefix, i, s)
        got = _IN_LAYER.get(key)
        if got is None:  # a shrink step asks for every slice of every layer: keep them
            got = _IN_LAYER[key] = replace(s, name=f"{self.layer_prefix(i)}.{s.name}")
        return got

    def model_level(self, slices, n_layers) -> list:
        """Model-level slices with ``{p}`` filled and ``{layer}`` expanded per layer."""
        out = []
        for s in slices:
            if "{layer}" in s.name:
                out += [replace(s, name=s.name.format(p=self.prefix, layer=self.layer_prefix(i)))
                        for i in range(n_layers)]
            else:
                out.append(replace(s, name=s.name.format(p=self.prefix)))
        return out

    def num_layers(self, state_dict) -> int:
        """How many layers the state dict holds (indices 0..n-1, none missing)."""
        pat = re.compile(re.escape(self.layer.format(p=self.prefix, i="<<I>>"))
                         .replace("<<I>>", r"(\d+)") + r"\.")
        found = set()
        for k in state_dict:
            m = pat.match(k)
            if m:
                found.add(int(m.group(1)))
        n = len(found)
        if found and found != set(range(n)):
            missing = sorted(set(range(max(found) + 1)) - found)
            raise ShapeError(f"state_dict: layers {missing} of {self.name} are missing")
        return n


_IN_LAYER = {}  # (layer pattern, prefix, i, slice) -> the slice named inside layer i


# ------------------------------------------------------------------ built-in families
def _decoder_lm():
    attn = []
    for name, key in (("self_attn", "heads"), ("multihead_attn", "cross_heads")):
        attn.append(Attention(
            name,
            q=(f"{name}.in_proj_weight:0[0/3]", f"{name}.in_proj_bias:0[0/3]?"),
            k=(f"{name}.in_proj_weight:0[1/3]", f"{name}.in_proj_bias:0[1/3]?"),
            v=(f"{name}.in_proj_weight:0[2/3]", f"{name}.in_proj_bias:0[2/3]?"),
            o=(f"{name}.out_proj.weight:1",), heads_key=key))
    L = "{layer}"
    return Arch(
        name="decoder_lm", layer="{p}transformer_decoder.layers.{i}",
        ffn=Coupling(produce=("linear1.weight:0", "linear1.bias:0?"),
                     consume=("linear2.weight:1",)),
        attention=tuple(attn),
        hidden=Coupling(
            produce=("{p}embed.weight:1", "{p}positional_encoding:0?",
                     f"{L}.self_attn.out_proj.weight:0", f"{L}.self_attn.out_proj.bias:0?",
                     f"{L}.multihead_attn.out_proj.weight:0",
                     f"{L}.multihead_attn.out_proj.bias:0?",
                     f"{L}.linear2.weight:0", f"{L}.linear2.bias:0?",
                     *(f"{L}.norm{j}.{w}:0" for j in (1, 2, 3) for w in ("weight", "bias"))),
            consume=(f"{L}.self_attn.in_proj_weight:1", f"{L}.multihead_attn.in_proj_weight:1",
                     f"{L}.linear1.weight:1", "{p}fc.weight:1")),
        vocab=("{p}embed.weight:0", "{p}fc.weight:0", "{p}fc.bias:0?"),
        keys={"vocab": "vocab", "hidden": "d_model", "ffn": "ffn", "heads": "heads",
              "cross_heads": "cross_heads", "head_dim": "head_dim", "layers": "layers"},
        markers=("transformer_decoder.layers.0.self_attn.in_proj_weight",))


def _llama():
    L = "{layer}"
    proj = ("q_proj", "k_proj", "v_proj")
    return Arch(
        name="llama", layer="{p}layers.{i}",
        ffn=Coupling(produce=("mlp.gate_proj.weight:0", "mlp.up_proj.weight:0",
                              "mlp.gate_proj.bias:0?", "mlp.up_proj.bias:0?"),
                     consume=("mlp.down_proj.weight:1",)),
        attention=(Attention(
            "self_attn",
            q=("self_attn.q_proj.weight:0", "self_attn.q_proj.bias:0?"),
            k=("self_attn.k_proj.weight:0", "self_attn.k_proj.bias:0?"),
            v=("self_attn.v_proj.weight:0", "self_attn.v_proj.bias:0?"),
            o=("self_attn.o_proj.weight:1",),
            heads_key="heads", kv_heads_key="kv_heads"),),
        hidden=Coupling(
            produce=("{p}embed_tokens.weight:1", f"{L}.input_layernorm.weight:0",
                     f"{L}.post_attention_layernorm.weight:0",
                     f"{L}.self_attn.o_proj.weight:0", f"{L}.self_attn.o_proj.bias:0?",
                     f"{L}.mlp.down_proj.weight:0", f"{L}.mlp.down_proj.bias:0?",
                     "{p}norm.weight:0"),
            consume=(*(f"{L}.self_attn.{p}.weight:1" for p in proj),
                     f"{L}.mlp.gate_proj.weight:1", f"{L}.mlp.up_proj.weight:1",
                     "lm_head.weight:1?")),
        vocab=("{p}embed_tokens.weight:0", "lm_head.weight:0?", "lm_head.bias:0?"),
        keys={"vocab": "vocab_size", "hidden": "hidden_size", "ffn": "intermediate_size",
              "heads": "num_attention_heads", "kv_heads": "num_key_value_heads",
              "head_dim": "head_dim", "layers": "num_hidden_layers", "norm_eps": "rms_norm_eps"},
        norm="rms",
        norms=(f"{L}.input_layernorm.weight", f"{L}.post_attention_layernorm.weight",
               "{p}norm.weight"),
        prefixes=("model.", ""), markers=("layers.0.self_attn.q_proj.weight",))


def _bert():
    L = "{layer}"
    return Arch(
        name="bert", layer="{p}encoder.layer.{i}",
        ffn=Coupling(produce=("intermediate.dense.weight:0", "intermediate.dense.bias:0?"),
                     consume=("output.dense.weight:1",)),
        attention=(Attention(
            "attention",
            q=("attention.self.query.weight:0", "attention.self.query.bias:0?"),
            k=("attention.self.key.weight:0", "attention.self.key.bias:0?"),
            v=("attention.self.value.weight:0", "attention.self.value.bias:0?"),
            o=("attention.output.dense.weight:1",), heads_key="heads"),),
        hidden=Coupling(
            produce=(*(f"{{p}}embeddings.{e}.weight:1"
                       for e in ("word_embeddings", "position_embeddings")),
                     "{p}embeddings.token_type_embeddings.weight:1?",
                     "{p}embeddings.LayerNorm.weight:0", "{p}embeddings.LayerNorm.bias:0",
                     f"{L}.attention.output.dense.weight:0", f"{L}.attention.output.dense.bias:0?",
                     f"{L}.attention.output.LayerNorm.weight:0",
                     f"{L}.attention.output.LayerNorm.bias:0",
                     f"{L}.output.dense.weight:0", f"{L}.output.dense.bias:0?",
                     f"{L}.output.LayerNorm.weight:0", f"{L}.output.LayerNorm.bias:0",
                     "{p}pooler.dense.weight:0?", "{p}pooler.dense.bias:0?",
                     "cls.predictions.transform.dense.weight:0?",
                     "cls.predictions.transform.dense.bias:0?",
                     "cls.predictions.transform.LayerNorm.weight:0?",
                     "cls.predictions.transform.LayerNorm.bias:0?"),
            consume=(*(f"{L}.attention.self.{p}.weight:1" for p in ("query", "key", "value")),
                     f"{L}.intermediate.dense.weight:1", "{p}pooler.dense.weight:1?",
                     "cls.predictions.transform.dense.weight:1?",
                     "cls.predictions.decoder.weight:1?")),
        vocab=("{p}embeddings.word_embeddings.weight:0", "cls.predictions.decoder.weight:0?",
               "cls.predictions.decoder.bias:0?", "cls.predictions.bias:0?"),
        keys={"vocab": "vocab_size", "hidden": "hidden_size", "ffn": "intermediate_size",
              "heads": "num_attention_heads", "layers": "num_hidden_layers"},
        prefixes=("bert.", ""), markers=("encoder.layer.0.attention.self.query.weight",))


def _gpt2():
    L = "{layer}"
    # Conv1D stores [in, out]: the output axis is 1, the input axis 0.
    return Arch(
        name="gpt2", layer="{p}h.{i}",
        ffn=Coupling(produce=("mlp.c_fc.weight:1", "mlp.c_fc.bias:0?"),
                     consume=("mlp.c_proj.weight:0",)),
        attention=(Attention(
            "attn",
            q=("attn.c_attn.weight:1[0/3]", "attn.c_attn.bias:0[0/3]?"),
            k=("attn.c_attn.weight:1[1/3]", "attn.c_attn.bias:0[1/3]?"),
            v=("attn.c_attn.weight:1[2/3]", "attn.c_attn.bias:0[2/3]?"),
            o=("attn.c_proj.weight:0",), heads_key="heads"),),
        hidden=Coupling(
            produce=("{p}wte.weight:1", "{p}wpe.weight:1",
                     f"{L}.ln_1.weight:0", f"{L}.ln_1.bias:0", f"{L}.ln_2.weight:0",
                     f"{L}.ln_2.bias:0", f"{L}.attn.c_proj.weight:1", f"{L}.attn.c_proj.bias:0?",
                     f"{L}.mlp.c_proj.weight:1", f"{L}.mlp.c_proj.bias:0?",
                     "{p}ln_f.weight:0", "{p}ln_f.bias:0"),
            consume=(f"{L}.attn.c_attn.weight:0", f"{L}.mlp.c_fc.weight:0",
                     "lm_head.weight:1?")),
        vocab=("{p}wte.weight:0", "lm_head.weight:0?"),
        keys={"vocab": "vocab_size", "hidden": "n_embd", "ffn": "n_inner", "heads": "n_head",
              "layers": "n_layer"},
        prefixes=("transformer.", ""), markers=("h.0.attn.c_attn.weight",))


BUILTIN = {}


def register(a: Arch, *aliases) -> Arch:
    """Make ``a`` known to ``get`` and ``detect`` (under its name and any aliases)."""
    if not isinstance(a, Arch):
        raise ArgumentError(f"arch: expected an Arch, got {type(a).__name__}")
    for n in (a.name, *aliases):
        BUILTIN[n] = a
    return a


register(_decoder_lm())
register(_llama(), "qwen2", "mistral")
register(_bert())
register(_gpt2())


def get(name) -> Arch:
    """A registered architecture by name ("decoder_lm", "llama", "qwen2", "mistral", "bert",
    "gpt2"); an Arch passes through."""
    if isinstance(name, Arch):
        return name
    try:
        return BUILTIN[name]
    except (KeyError, TypeError):
        raise ArgumentError(f"arch: unknown architecture {name!r}; known: "
                            f"{', '.join(BUILTIN)}") from None


def detect(state_dict, config=None) -> Arch:
    """The registered architecture whose marker tensor the state dict has, bound to
    ``config`` (a config.json dict; ``model_type`` decides when it names a known family), by
    default the state dict's own (``config_of``)."""
    if not isinstance(state_dict, dict):
        raise ArgumentError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    if config is None:
        config = config_of(state_dict)
    if config is not None and not isinstance(config, dict):
        raise ArgumentError(f"config: expected a dict, got {type(config).__name__}")
    mtype = (config or {}).get("model_type")
    candidates = [get(mtype)] if mtype in BUILTIN else []
    seen = set()
    for a in candidates + list(BUILTIN.values()):
        if id(a) in seen:
            continue
        seen.add(id(a))
        for p in a.prefixes:
            if any(p + m in state_dict for m in a.markers):
                return a.bind(config, p)
    shown = ", ".join(repr(k) for k in list(state_dict)[:3])
    raise ArgumentError(f"state_dict: matches no known architecture ({', '.join(BUILTIN)}); "
                        f"its first names are {shown}. Describe it with litecomp.arch.Arch "
                        "(docs/shrink.md)")
