"""Calibrated compression: GPTQ and SparseGPT of one 4096x4096 Linear beside a torch CPU
implementation of the same algorithm (written here, after IST-DASLab's gptq.py /
sparsegpt.py), Hessian accumulation beside NumPy's matmul FLOP rate, and the whole
pipeline beside llm-compressor's ``oneshot`` on a small Hugging Face LLaMA (MISSING unless
``pip install torch==2.13.0 llmcompressor`` -- one command line, so the CPU torch stays)."""

import copy
import time
import os

import numpy as np

import litecomp
from litecomp import calib

from ..harness import Run, case, missing, optional_import

torch = optional_import("torch")


def _layer(quick, seed=0):
    n = 512 if quick else 4096
    rng = np.random.default_rng(seed)
    tokens = 2 * n
    a = rng.standard_normal((n, n), dtype=np.float32) / np.float32(np.sqrt(n) / 2)
    a += np.eye(n, dtype=np.float32)
    x = rng.standard_normal((tokens, n), dtype=np.float32) @ a
    x *= np.exp(rng.standard_normal(n)).astype(np.float32)
    h = calib.Hessian(n)
    h.update(x)
    w = (rng.standard_normal((n, n), dtype=np.float32) * np.float32(0.02))
    return w, h.matrix


# ------------------------------------------------------------------ torch twins
def _torch_factor(H, damp=0.01):
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    idx = torch.arange(H.shape[0])
    H[idx, idx] += damp * torch.mean(torch.diag(H))
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    return torch.linalg.cholesky(H, upper=True)


def _torch_params(x, bits):
    qmax = 2 ** bits - 1
    amax = torch.maximum(-torch.clamp(x.min(1).values, max=0), torch.clamp(x.max(1).values, min=0))
    s = torch.clamp(amax / (qmax / 2), min=torch.finfo(torch.float32).eps)
    return s.unsqueeze(1), torch.full_like(s, 2 ** (bits - 1)).unsqueeze(1)


def torch_gptq(W, H, bits=4, group=128, block=128):
    """gptq.py's fasterquant on CPU with litecomp's quantizer (the same codes)."""
    W = W.clone()
    Hinv = _torch_factor(H)
    rows, cols = W.shape
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            if (i1 + i) % group == 0:
                s, z = _torch_params(W[:, i1 + i:i1 + i + group], bits)
                s, z = s.flatten(), z.flatten()
            q = (torch.clamp(torch.round(w * (1 / s)) + z, 0, 2 ** bits - 1) - z) * s
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return Q


def torch_sparsegpt(W, H, sparsity=0.5, block=128):
    """sparsegpt.py's fasterprune (unstructured) on CPU."""
    W = W.clone()
    Hinv = _torch_factor(H)
    rows, cols = W.shape
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        tmp = W1 ** 2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
        thresh = torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        mask1 = tmp <= thresh
        for i in range(i2 - i1):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


def _check_close_error(w, H):
    """Both sides' relative output error tr(E H E^T) / tr(W H W^T) within 2%."""
    def err(v):
        v = np.asarray(v, np.float32)
        e = v - w
        return float(np.sum((e @ H) * e)) / float(np.sum((w @ H) * w))

    def check(a, b):
        ea = err(a.dequantize() if hasattr(a, "dequantize") else a[0])
        eb = err(b.numpy())
        assert ea <= eb * 1.02, (ea, eb)
    return check


@case("GPTQ 4-bit g128 of one 4096x4096 Linear (block 128)", group="calib", repeats=1, warm_up=False)
def gptq_layer(quick):
    w, H = _layer(quick)
    if torch is None:
        anchor = missing("torch CPU GPTQ (gptq.py's loop)", "torch")
    else:
        wt, Ht = torch.from_numpy(w), torch.from_numpy(H)
        anchor = ("torch CPU GPTQ (gptq.py's loop)", lambda: torch_gptq(wt, Ht))
    return Run(litecomp=lambda: litecomp.quant.gptq(w, H, 4, 128),
               anchor=anchor[:2], missing_reason=anchor[2] if len(anchor) > 2 else "",
               check=_check_close_error(w, H) if torch is not None else None,
               notes="same codes up to float32 rounding; check: output error within 2%")


@case("SparseGPT 50% of one 4096x4096 Linear (block 128)", group="calib", repeats=1, warm_up=False)
def sparsegpt_layer(quick):
    w, H = _layer(quick, seed=1)
    if torch is None:
        anchor = missing("torch CPU SparseGPT (sparsegpt.py's loop)", "torch")
    else:
        wt, Ht = torch.from_numpy(w), torch.from_numpy(H)
        anchor = ("torch CPU SparseGPT (sparsegpt.py's loop)", lambda: torch_sparsegpt(wt, Ht))
    return Run(litecomp=lambda: litecomp.prune.sparsegpt(w, H, 0.5),
               anchor=anchor[:2], missing_reason=anchor[2] if len(anchor) > 2 else "",
               check=_check_close_error(w, H) if torch is not None else None)


@case("Hessian accumulation, 262,144 tokens x 4096 features (f32)", group="calib", repeats=1, warm_up=False)
def hessian_accumulation(quick):
    n = 256 if quick else 4096
    tokens = 4096 if quick else int(os.environ.get("LITECOMP_BENCH_HESSIAN_TOKENS", 262144))
    chunk = 1024 if quick else 16384
    x = litecomp.random.normal((chunk, n), seed=5)

    def lite():
        h = calib.Hessian(n)
        for _ in range(tokens // chunk):
            h.update(x)
        return h

    def numpy_matmul():  # the same FLOPs as plain float32 GEMMs (x^T x), no accumulation
        for _ in range(tokens // chunk):
            x.T @ x

    return Run(litecomp=lite, anchor=("numpy x.T @ x, same shapes (FLOP-rate yardstick)",
                                      numpy_matmul),
               notes=f"{tokens} tokens in chunks of {chunk}; speedup = fraction of NumPy's "
                     "matmul FLOP rate",
               yardstick="NumPy's BLAS x.T @ x on the same shapes, without accumulating")


# ------------------------------------------------------------------ the peer, whole model
# "toy": 4 layers of width 512 (the torch forward passes, the same on both sides, are most
# of the time); "tinyllama": 2 layers of TinyLlama-1.1B's real shape (width 2048, MLP 5632,
# 32 query heads over 4 KV heads), where compressing each layer is most of the time.
LLAMA_SHAPES = {
    "toy": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                num_attention_heads=8, num_key_value_heads=8),
    "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=2,
                      num_attention_heads=32, num_key_value_heads=4),
}


def _tiny_llama(quick, shape="toy", seed=0):
    transformers = optional_import("transformers")
    dims = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=4) if quick else LLAMA_SHAPES[shape]
    cfg = transformers.LlamaConfig(vocab_size=512 if quick else 2048,
                                   max_position_embeddings=256, **dims)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    # llm-compressor re-reads the config from model.config.name_or_path: give it a folder,
    # removed when the process ends (each one holds the whole model, 369 MB for TinyLlama's)
    import atexit
    import shutil
    import tempfile
    folder = tempfile.mkdtemp(prefix="litecomp-bench-llama-")
    atexit.register(shutil.rmtree, folder, True)
    model.save_pretrained(folder)
    return transformers.LlamaForCausalLM.from_pretrained(folder).eval(), cfg


def _calib_tokens(cfg, quick, n=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = n or (4 if quick else 32)
    return [torch.randint(0, cfg.vocab_size, (1, 64 if quick else 128), generator=g)
            for _ in range(n)]


def _logit_error(model, ref, batches):
    with torch.no_grad():
        num = sum(float(((model(b).logits - r) ** 2).sum()) for b, r in zip(batches, ref))
    return num / sum(float((r ** 2).sum()) for r in ref)


def _word_tokenizer(vocab):
    """A tokenizer object for llm-compressor's data path (the data comes tokenized; it is
    only asked for padding, which equal-length samples never need)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel({str(i): i for i in range(vocab)}, unk_token="0"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="0", pad_token="0")


def _peer_case(method, quick, shape="toy", seed=0, true_sequential=None):
    llmc = optional_import("llmcompressor")
    if torch is None or optional_import("transformers") is None or llmc is None:
        return Run(litecomp=lambda: None,
                   anchor=missing(f"llmcompressor.oneshot {method}", "llmcompressor")[:2],
                   missing_reason="llmcompressor not installed (pip install torch==2.13.0 "
                                  "llmcompressor, on one command line)")
    import litecomp.torch as lt
    base, cfg = _tiny_llama(quick, shape, seed)
    batches = _calib_tokens(cfg, quick, seed=2 * seed)
    test = _calib_tokens(cfg, quick, n=4, seed=2 * seed + 1)
    with torch.no_grad():
        ref = [base(b).logits for b in test]
    if method == "gptq":
        # llm-compressor's GPTQModifier defaults to actorder="static": the same here
        recipe = {"method": "gptq", "bits": 4, "group_size": 128, "act_order": True,
                  "static_groups": True, "ignore": ["lm_head"]}
    else:
        recipe = {"method": "sparsegpt", "sparsity": 0.5, "ignore": ["lm_head"]}

    seconds = {}  # side -> wall time of its oneshot call alone (no copy, no evaluation)

    def lite():
        m = copy.deepcopy(base)
        t = time.perf_counter()
        lt.oneshot(m, recipe, batches, sequential_targets=["LlamaDecoderLayer"],
                   progress=False, true_sequential=true_sequential)
        seconds["litecomp"] = time.perf_counter() - t
        return _logit_error(m, ref, test)

    def peer():
        from datasets import Dataset
        from llmcompressor import oneshot
        if method == "gptq":
            from llmcompressor.modifiers.quantization import GPTQModifier
            mod = GPTQModifier(targets="Linear", scheme="W4A16", ignore=["lm_head"])
        else:
            from llmcompressor.modifiers.pruning import SparseGPTModifier
            # its targets are the blocks whose Linear layers it prunes
            mod = SparseGPTModifier(sparsity=0.5, targets=["LlamaDecoderLayer"],
                                    ignore=["re:.*lm_head"])
        m = copy.deepcopy(base)
        ds = Dataset.from_dict({"input_ids": [b[0].tolist() for b in batches],
                                "attention_mask": [[1] * b.shape[1] for b in batches]})
        t = time.perf_counter()
        oneshot(model=m, dataset=ds, recipe=mod, processor=_word_tokenizer(cfg.vocab_size),
                num_calibration_samples=len(batches), max_seq_length=batches[0].shape[1])
        seconds["llm-compressor"] = time.perf_counter() - t
        return _logit_error(m, ref, test)

    run = Run(litecomp=lite, anchor=(f"llmcompressor.oneshot {method}", peer))
    run.oneshot_seconds = seconds

    def check(a, b):
        run.notes = f"held-out logit error: litecomp {a:.4g}, llm-compressor {b:.4g}"
        assert a <= b * 1.05, (a, b)
    run.check = check
    return run


@case("oneshot GPTQ W4A16 (g128), small LLaMA, beside llm-compressor", group="calib",
      repeats=1, warm_up=False)
def peer_gptq(quick):
    return _peer_case("gptq", quick)


@case("oneshot SparseGPT 50%, small LLaMA, beside llm-compressor", group="calib", repeats=1, warm_up=False)
def peer_sparsegpt(quick):
    return _peer_case("sparsegpt", quick)


@case("oneshot GPTQ W4A16 (g128), 2 TinyLlama-1.1B-shaped layers, beside llm-compressor",
      group="calib", repeats=1, warm_up=False)
def peer_gptq_tinyllama(quick):
    return _peer_case("gptq", quick, "tinyllama")


@case("oneshot SparseGPT 50%, 2 TinyLlama-1.1B-shaped layers, beside llm-compressor",
      group="calib", repeats=1, warm_up=False)
def peer_sparsegpt_tinyllama(quick):
    return _peer_case("sparsegpt", quick, "tinyllama")


# ------------------------------------------------------------------ quality, full-size decoder
QUALITY = {  # method -> (recipe, data-free baseline in the report)
    "gptq": ({"method": "gptq", "bits": 4, "group_size": 128}, "rtn 4-bit g128"),
    "sparsegpt": ({"method": "sparsegpt", "sparsity": 0.5}, "magnitude 50% per row"),
    "sparsegpt 2:4": ({"method": "sparsegpt", "n": 2, "m": 4}, "magnitude 2:4"),
    "wanda": ({"method": "wanda", "sparsity": 0.5}, "magnitude 50% per row"),
}


def decoder_layer_errors(quick, seqs=4, seq_len=128, seed=0):
    """{method: [(layer, error, baseline error)]}: the report of ``oneshot`` on the
    example decoder (``litecomp.examples.decoder_lm``; the tiny one when quick) calibrated
    on random token ids, i.e. each layer's reconstruction error on the real activations
    that reach it through the (already compressed) layers before it."""
    import litecomp.torch as lt
    from litecomp import examples
    sizes = examples.TINY_DECODER_LM if quick else {}
    sd = examples.decoder_lm(**sizes, seed=seed)
    model = lt.DecoderLM(**(sizes or {})).eval()
    lt.load_numpy_state_dict(model, sd)
    del sd
    g = torch.Generator().manual_seed(seed)
    vocab = model.embed.num_embeddings
    batches = [torch.randint(0, vocab, (1, seq_len), generator=g) for _ in range(seqs)]
    out = {}
    for name, (recipe, _base) in QUALITY.items():
        m = copy.deepcopy(model)
        if quick and "group_size" in recipe:
            recipe = dict(recipe, group_size=32)  # the tiny decoder is 64 wide
        res = lt.oneshot(m, dict(recipe, ignore=["fc"]), batches, progress=False,
                         baselines=True)
        out[name] = [(r.name, r.error, r.baseline_error) for r in res.report]
        del m
    return out


@case("layer-wise error on the full-size example decoder: calibrated vs data-free",
      group="calib", repeats=1, warm_up=False)
def decoder_quality(quick):
    """A quality row: the time is the four calibrated oneshot runs; the notes hold each
    method's error over its data-free counterpart's on the same layer inputs (< 1: better)."""
    if torch is None:
        return Run(litecomp=lambda: None, anchor=missing("data-free baselines", "torch")[:2],
                   missing_reason="torch not installed")
    run = Run(litecomp=lambda: None, anchor=("(quality row: errors in the notes)", None),
              missing_reason="no anchor: the data-free errors come from the same report")

    def lite():
        errs = decoder_layer_errors(quick, *((2, 16) if quick else ()))
        parts = []
        for name, rows in errs.items():
            ratio = [e / b for _n, e, b in rows]
            parts.append(f"{name} / {QUALITY[name][1]}: mean {np.mean(ratio):.3f}x, worst "
                         f"{max(ratio):.3f}x over {len(rows)} layers")
        run.notes = "; ".join(parts)
        return errs
    run.litecomp = lite
    return run
