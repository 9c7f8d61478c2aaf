"""Built-in example models, made without torch.

``decoder_lm()`` is the model litecomp was born from: ``nn.Embedding(vocab, d_model)``, a
learned ``positional_encoding`` vector, a 6-layer ``nn.TransformerDecoder`` (8 heads, ffn
2048) and an ``nn.Linear(d_model, vocab)`` head -- about 126M parameters, 505 MB in float32
at the default size.  Names, shapes and order are exactly torch's ``state_dict()`` for that
module (``litecomp.torch.DecoderLM`` builds the torch twin), and the values follow torch's
default initialisation:

- Embedding: N(0, 1).  positional_encoding: N(0, 0.02).
- Linear (linear1, linear2, fc, out_proj): weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  (kaiming_uniform with a=sqrt(5)); out_proj.bias is 0, as MultiheadAttention sets it.
- MultiheadAttention in_proj_weight: xavier_uniform, U(-sqrt(6/(d+3d)), +...); in_proj_bias 0.
- LayerNorm: weight 1, bias 0.

One difference, on purpose: torch's TransformerDecoder deep-copies one layer, so its
layers start identical; here each layer draws its own values (stream = tensor index), which
is closer to a trained model for compression experiments.  Values come from litecomp's
counter-based generator: the same seed gives the same bits on any thread count.
"""

import math

import numpy as np

from . import random as _random
from ._check import check_int


def _layer_spec(prefix, d, ffn):
    a = math.sqrt(6.0 / (d + 3 * d))
    lin_d = 1.0 / math.sqrt(d)
    lin_f = 1.0 / math.sqrt(ffn)
    spec = []
    for attn in ("self_attn", "multihead_attn"):
        spec += [
            (f"{prefix}.{attn}.in_proj_weight", (3 * d, d), ("uniform", a)),
            (f"{prefix}.{attn}.in_proj_bias", (3 * d,), ("const", 0.0)),
            (f"{prefix}.{attn}.out_proj.weight", (d, d), ("uniform", lin_d)),
            (f"{prefix}.{attn}.out_proj.bias", (d,), ("const", 0.0)),
        ]
    spec += [
        (f"{prefix}.linear1.weight", (ffn, d), ("uniform", lin_d)),
        (f"{prefix}.linear1.bias", (ffn,), ("uniform", lin_d)),
        (f"{prefix}.linear2.weight", (d, ffn), ("uniform", lin_f)),
        (f"{prefix}.linear2.bias", (d,), ("uniform", lin_f)),
    ]
    for norm in ("norm1", "norm2", "norm3"):
        spec += [
            (f"{prefix}.{norm}.weight", (d,), ("const", 1.0)),
            (f"{prefix}.{norm}.bias", (d,), ("const", 0.0)),
        ]
    return spec


def decoder_lm_spec(vocab=98631, d_model=512, heads=8, layers=6, ffn=2048):
    """[(name, shape, init)] of ``decoder_lm`` in state-dict order, without allocating."""
    vocab = check_int(vocab, "vocab", 1)
    d_model = check_int(d_model, "d_model", 1)
    heads = check_int(heads, "heads", 1)
    layers = check_int(layers, "layers", 0)
    ffn = check_int(ffn, "ffn", 1)
    if d_model % heads:
        from .errors import ArgumentError
        raise ArgumentError(f"heads: d_model ({d_model}) must be divisible by heads ({heads})")
    spec = [
        ("positional_encoding", (d_model,), ("normal", 0.02)),
        ("embed.weight", (vocab, d_model), ("normal", 1.0)),
    ]
    for i in range(layers):
        spec += _layer_spec(f"transformer_decoder.layers.{i}", d_model, ffn)
    bound = 1.0 / math.sqrt(d_model)
    spec += [
        ("fc.weight", (vocab, d_model), ("uniform", bound)),
        ("fc.bias", (vocab,), ("uniform", bound)),
    ]
    return spec


def decoder_lm(vocab=98631, d_model=512, heads=8, layers=6, ffn=2048, seed=0):
    """State dict (name -> float32 array) of the motivating decoder language model: a
    ``litecomp.arch.StateDict`` whose ``.config`` holds the sizes it was built with
    (``litecomp.torch.DecoderLM``'s keyword arguments, the head count included, which no
    tensor shows), so shrinking needs no ``config=``.

    >>> tiny_decoder_lm().config
    {'vocab': 1000, 'd_model': 64, 'heads': 4, 'layers': 2, 'ffn': 128}
    """
    from .arch import StateDict
    seed = check_int(seed, "seed", 0, 2 ** 64 - 1)
    spec = decoder_lm_spec(vocab, d_model, heads, layers, ffn)
    sd = StateDict(config={k: int(v) for k, v in (("vocab", vocab), ("d_model", d_model),
                           ("heads", heads), ("layers", layers), ("ffn", ffn))})
    for stream, (name, shape, (kind, p)) in enumerate(spec):
        if kind == "normal":
            sd[name] = _random.normal(shape, 0.0, p, seed=seed, stream=stream)
        elif kind == "uniform":
            sd[name] = _random.uniform(shape, -p, p, seed=seed, stream=stream)
        else:
            sd[name] = np.full(shape, p, np.float32)
    return sd


#: The sizes of ``tiny_decoder_lm``.
TINY_DECODER_LM = {"vocab": 1000, "d_model": 64, "heads": 4, "layers": 2, "ffn": 128}


def tiny_decoder_lm(seed=0):
    """A few-hundred-kilobyte version of ``decoder_lm`` for tests and quick examples."""
    return decoder_lm(**TINY_DECODER_LM, seed=seed)
