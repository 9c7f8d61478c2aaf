"""litecomp prune: prune a checkpoint's weights and save it, dense or sparse."""

import argparse

NAME = "prune"
HELP = "prune a checkpoint (l1, ln, nm, block or global) and save it, optionally sparse"


def add_arguments(p):
    p.add_argument("input", metavar="IN", help="checkpoint to read (.safetensors, .pth, ...)")
    p.add_argument("output", metavar="OUT", help="checkpoint to write")
    p.add_argument("--recipe", metavar="FILE", default=None,
                   help="a recipe (.json/.yaml) of pruning stages; replaces --method/--amount")
    p.add_argument("--amount", type=_amount, default=0.5,
                   help="a fraction like 0.5 (default) or a count like 1000, as torch "
                        "reads them (1 prunes one entry, 1.0 all); ignored by nm")
    p.add_argument("--method", choices=tuple(METHODS) + CALIBRATED, default="l1",
                   help="l1: per-tensor magnitude; ln: whole output rows by L2 norm; "
                        "nm: N:M groups along the input axis; block: blocks by L2 norm; "
                        "global: one magnitude threshold over all selected tensors; "
                        "sparsegpt, wanda: calibrated, with --hessians (--amount is the "
                        "sparsity, or --nm N:M)")
    p.add_argument("--hessians", metavar="FILE", default=None,
                   help="layer Hessians (<layer>.hessian + <layer>.count) for sparsegpt / "
                        "wanda, or for calibrated stages of --recipe")
    add_selection_arguments(p, "prune")
    p.add_argument("--nm", metavar="N:M", default=None,
                   help="N:M for --method nm (default 2:4), or for sparsegpt / wanda")
    p.add_argument("--block-shape", metavar="RxC", default=None,
                   help="block shape for --method block (1x4)")
    p.add_argument("--block", default=None, help=argparse.SUPPRESS)  # old --block-shape
    p.add_argument("--sparse", action="store_true",
                   help="store pruned tensors compressed (sparse-bitmask, or N:M form)")


CALIBRATED = ("sparsegpt", "wanda")

# --method -> the recipe stage it stands for
METHODS = {"l1": {"granularity": "tensor"}, "ln": {"granularity": "channel", "axis": 0},
           "nm": {}, "block": {"granularity": "block"}, "global": {"granularity": "global"}}


def add_selection_arguments(p, verb):
    """--targets / --ignore (and the older --layers), shared by the commands."""
    p.add_argument("--targets", metavar="PATTERNS", default=None,
                   help=f"comma-separated names to {verb}: globs, or re:<regex> (full match) "
                        "(default: every float tensor with 2 or more dimensions)")
    p.add_argument("--ignore", metavar="PATTERNS", default=None,
                   help=f"comma-separated patterns of names not to {verb}")
    p.add_argument("--layers", metavar="PATTERNS", default=None,
                   help="older spelling of --targets")


def selection(args):
    """(targets, ignore) from the command line, as lists of patterns (or None)."""
    from . import renamed_option

    def split(text):
        return None if text is None else [t.strip() for t in text.split(",") if t.strip()]
    targets = renamed_option(args.targets, args.layers, "--targets", "--layers")
    return split(targets), split(args.ignore)


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


def _streamable(src, out):
    """A dense .safetensors output from a checkpoint without torch's pruning
    reparametrisation (X_orig + X_mask, which loading bakes): the streaming path."""
    if not str(out).endswith(".safetensors"):
        return False
    from .. import io
    with io.open(src) as ck:
        return not any(n.endswith(("_orig", "_mask")) for n in ck)


def _size(path):
    """Bytes of a checkpoint file, or of a folder's / index's tensors."""
    import os

    import numpy as np

    from .. import io
    if os.path.isfile(path) and not str(path).endswith(".json"):
        return os.path.getsize(path)
    with io.open(path) as ck:
        return sum(int(np.prod(ck.info(n)[1], dtype=np.int64)) * np.dtype(ck.info(n)[0])
                   .itemsize for n in ck)


def stage_of(args):
    """The recipe stage that --method/--amount/--nm/--block-shape/--targets/--ignore
    describe."""
    targets, ignore = selection(args)
    if args.method in CALIBRATED:
        stage = {"method": args.method, "targets": targets, "ignore": ignore}
        if args.nm is not None:
            stage["n"], stage["m"] = _parse_pair(args.nm, ":", "--nm")
        elif isinstance(args.amount, float):
            stage["sparsity"] = args.amount
        else:
            from ..errors import ArgumentError
            raise ArgumentError(f"--amount: {args.method} takes a sparsity fraction like 0.5, "
                                f"not a count ({args.amount})")
        return {k: v for k, v in stage.items() if v is not None}
    stage = {"method": "magnitude", "targets": targets, "ignore": ignore}
    if args.method == "nm":
        stage["n"], stage["m"] = _parse_pair(args.nm or "2:4", ":", "--nm")
    else:
        stage["amount"] = args.amount
        stage.update(METHODS[args.method])
        if args.method == "block":
            from . import renamed_option
            text = renamed_option(args.block_shape, args.block, "--block-shape", "--block")
            stage["block_shape"] = _parse_pair(text or "1x4", "x", "--block-shape")
    return {k: v for k, v in stage.items() if v is not None}


def run(args):
    import os

    from .. import load, prune, recipe, save, sparse
    from .._table import format_bytes
    from ..errors import ArgumentError
    if args.recipe:
        if args.targets or args.ignore or args.layers:
            raise ArgumentError("--targets: with --recipe, targets and ignore go in the "
                                "recipe's stages")
        plan = recipe.stages(args.recipe, family="prune")
    else:
        plan = stage_of(args)
    calibrated = any(s.calibrated for s in recipe.stages(plan, family="prune"))
    if not args.sparse and not calibrated and _streamable(args.input, args.output):
        # one tensor at a time, in and out (litecomp.compress)
        from ..compress import compress
        from ..prune.report import SparsityReport
        rows = compress(args.input, args.output, plan, format="safetensors")
        print(SparsityReport(tuple((r.name, r.numel, round(r.sparsity * r.numel))
                                   for r in rows if r.methods)))
        print(f"\n{args.input}: {format_bytes(_size(args.input))} -> {args.output}: "
              f"{format_bytes(os.path.getsize(args.output))} (dense)")
        return 0
    sd = load(args.input)
    checked = recipe.stages(plan, family="prune")
    if any(s.calibrated for s in checked):
        from .. import calib
        if not args.hessians:
            raise ArgumentError(f"--hessians: method {next(s.method for s in checked if s.calibrated)!r} "
                                "needs the layer Hessians (a file from "
                                "litecomp.calib.save_hessians)")
        from .quantize import print_calib_report
        hs = calib.load_hessians(args.hessians)
        masks = {}
        pruned = sd
        report = []
        for st in checked:
            pruned, rep = calib.apply_stage(pruned, st, hs, masks=masks, baselines=True)
            report.extend(rep)
        print_calib_report(report)
    else:
        if args.hessians:
            raise ArgumentError("--hessians: only sparsegpt and wanda use Hessians")
        pruned, masks = prune.prune_state_dict(sd, plan)
    nm_stage = args.method == "nm" and not args.recipe
    if args.sparse and nm_stage:
        n, m = _parse_pair(args.nm or "2:4", ":", "--nm")
        out = sparse.compress(pruned, format="nm", n=n, m=m)
    else:
        out = sparse.compress(pruned) if args.sparse else pruned
    save(out, args.output)
    print(prune.sparsity({k: pruned[k] for k in masks}))
    print(f"\n{args.input}: {format_bytes(os.path.getsize(args.input))} -> {args.output}: "
          f"{format_bytes(os.path.getsize(args.output))}"
          + (" (sparse)" if args.sparse else " (dense)"))
    return 0
