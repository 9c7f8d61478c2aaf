"""litecomp prune: prune a checkpoint's weights and save it, dense or sparse."""

NAME = "prune"
HELP = "prune a checkpoint (l1, ln, nm, block or global) and save it, optionally sparse"


import argparse


def add_arguments(p):
    p.add_argument("input", metavar="IN", help="checkpoint to read (.safetensors, .pth, ...)")
    p.add_argument("output", metavar="OUT", help="checkpoint to write")
    p.add_argument("--amount", type=_amount, default=0.5,
                   help="a fraction like 0.5 (default) or a count like 1000, as torch "
                        "reads them (1 prunes one entry, 1.0 all); ignored by nm")
    p.add_argument("--method", choices=("l1", "ln", "nm", "block", "global"), default="l1",
                   help="l1: per-tensor magnitude; ln: whole output rows by L2 norm; "
                        "nm: N:M groups along the input axis; block: blocks by L2 norm; "
                        "global: one magnitude threshold over all selected tensors")
    p.add_argument("--layers", metavar="PATTERN", default=None,
                   help="comma-separated glob patterns of tensor names to prune "
                        "(default: every tensor with 2 or more dimensions)")
    p.add_argument("--nm", metavar="N:M", default="2:4", help="N:M for --method nm (2:4)")
    p.add_argument("--block-shape", metavar="RxC", default=None,
                   help="block shape for --method block (1x4)")
    p.add_argument("--block", default=None, help=argparse.SUPPRESS)  # old --block-shape
    p.add_argument("--sparse", action="store_true",
                   help="store pruned tensors compressed (sparse-bitmask, or N:M form)")


def _amount(text):
    """torch's amount from the command line: '1000' is a count, '0.5' or '1.0' a fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _parse_pair(text, sep, what):
    from ..errors import ArgumentError
    try:
        a, b = (int(v) for v in text.lower().split(sep))
    except ValueError:
        raise ArgumentError(f"{what}: expected two integers like 2{sep}4, got {text!r}") \
            from None
    return a, b


def select_layers(state_dict, pattern):
    """Names to prune: those matching any glob in ``pattern`` (default: every >= 2-D tensor
    of a float dtype)."""
    import fnmatch

    import numpy as np

    from .. import dtypes
    from ..errors import ArgumentError
    names = [k for k, v in state_dict.items()
             if isinstance(v, np.ndarray) and dtypes.name_of(v.dtype) in dtypes.WEIGHT_DTYPES]
    if pattern is None:
        chosen = [k for k in names if state_dict[k].ndim >= 2]
    else:
        pats = [p.strip() for p in pattern.split(",") if p.strip()]
        chosen = [k for k in names if any(fnmatch.fnmatchcase(k, p) for p in pats)]
    if not chosen:
        raise ArgumentError(f"--layers: no floating-point tensor matches {pattern!r}")
    return chosen


def prune_state_dict(sd, method="l1", amount=0.5, layers=None, nm=(2, 4), block_shape=None,
                     *, block=None):
    """(pruned state dict, {name: mask}) -- the command's work, usable from Python.
    ``block=`` is the old spelling of ``block_shape`` (default (1, 4))."""
    from .. import prune
    from .._check import renamed
    block_shape = renamed(block_shape, block, "block_shape", "block") or (1, 4)
    sd = prune.bake(sd)  # a torch-pruned checkpoint (X_orig + X_mask) becomes plain first
    names = select_layers(sd, layers)
    if method == "global":
        masks = prune.global_unstructured({k: sd[k] for k in names}, amount)
    else:
        masks = {}
        for k in names:
            w = sd[k]
            if method == "l1":
                masks[k] = prune.l1_unstructured(w, amount)
            elif method == "ln":
                masks[k] = prune.ln_structured(w, amount, norm=2, axis=0) if w.ndim >= 2 else \
                    prune.l1_unstructured(w, amount)
            elif method == "nm":
                if w.shape[-1] % nm[1]:
                    continue
                masks[k] = prune.nm(w, nm[0], nm[1])
            else:
                if w.ndim != 2:
                    continue
                masks[k] = prune.block(w, amount, block_shape)
    out = dict(sd)
    for k, m in masks.items():
        out[k] = prune.apply(sd[k], m)
    return out, masks


def run(args):
    import os

    from .. import prune, sparse
    from .._table import format_bytes
    from ..errors import ArgumentError
    from . import renamed_option
    try:
        from .. import load, save
    except ImportError:  # pragma: no cover - until checkpoint I/O is present
        raise ArgumentError("IN: reading and writing checkpoints needs litecomp.load/save "
                            "(checkpoint I/O)") from None
    nm = _parse_pair(args.nm, ":", "--nm")
    block_text = renamed_option(args.block_shape, args.block, "--block-shape", "--block")
    block_shape = _parse_pair(block_text or "1x4", "x", "--block-shape")
    sd = load(args.input)
    pruned, masks = prune_state_dict(sd, args.method, args.amount, args.layers, nm,
                                     block_shape)
    out = sparse.compress(pruned, format="nm", n=nm[0], m=nm[1]) \
        if args.sparse and args.method == "nm" else \
        sparse.compress(pruned) if args.sparse else pruned
    save(out, args.output)
    print(prune.sparsity({k: pruned[k] for k in masks}))
    print(f"\n{args.input}: {format_bytes(os.path.getsize(args.input))} -> {args.output}: "
          f"{format_bytes(os.path.getsize(args.output))}"
          + (" (sparse)" if args.sparse else " (dense)"))
    return 0
