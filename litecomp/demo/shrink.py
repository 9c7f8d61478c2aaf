"""The demo's shrinking step: the biggest waste of the example model is its vocabulary --
embed.weight and fc.weight are 80% of the parameters -- so count the ids a corpus uses,
keep the 8,192 most frequent, and see the model (not only its file) get smaller."""

import os
import time

import numpy as np

from .._table import format_bytes, format_count

NAME = "shrink"


def run(ctx) -> str:
    """Count token ids of a corpus, keep the 8,192 most frequent rows of embed and fc."""
    from .. import save, shrink
    from ..arch import config_path, save_config
    sd = ctx.state_dict
    vocab = sd["embed.weight"].shape[0]
    keep = min(8192, vocab // 4)
    # a stand-in for ~5 MB of tokenized text: 1.25M ids with a Zipf-like law, as text has
    rng = np.random.default_rng(ctx.seed)
    corpus = [np.minimum(rng.zipf(1.2, 250_000), vocab) - 1 for _ in range(5)]
    t = time.perf_counter()
    counts = shrink.token_counts(corpus, vocab)
    ids = shrink.top_ids(counts, keep)
    t_count = time.perf_counter() - t
    t = time.perf_counter()
    r = shrink.vocab(sd, "decoder_lm", ids)
    t_cut = time.perf_counter() - t
    path = ctx.path("model_vocab_shrunk.safetensors")
    save(r.state_dict, path)
    save_config(r.config, config_path(path))
    before, after = shrink.count_parameters(sd), shrink.count_parameters(r.state_dict)
    used = int(np.count_nonzero(counts))
    print(f"token_counts over {sum(c.size for c in corpus):,} ids: {used:,} of {vocab:,} ids "
          f"occur; top_ids keeps {keep:,} ({t_count:.3f} s); shrink.vocab {t_cut:.3f} s")
    print(f"embed.weight {sd['embed.weight'].shape} -> {r.state_dict['embed.weight'].shape}, "
          f"fc.weight {sd['fc.weight'].shape} -> {r.state_dict['fc.weight'].shape}")
    print(f"parameters {format_count(before)} -> {format_count(after)}; file "
          f"{format_bytes(os.path.getsize(path))}; new config {r.config}")
    return (f"vocab {vocab:,} -> {keep:,}: {format_count(before)} -> {format_count(after)} "
            f"parameters, file {format_bytes(os.path.getsize(path))}")
