"""litecomp quantize: quantize a checkpoint's weights and write a compact file."""

NAME = "quantize"
HELP = "quantize a checkpoint (litecomp packed format, GGUF, or NF4) and report the error"

FORMATS = ("litecomp", "gguf:Q8_0", "gguf:Q4_0", "gguf:Q4_1", "gguf:Q5_0", "gguf:Q5_1",
           "gguf:Q2_K", "gguf:Q3_K", "gguf:Q4_K", "gguf:Q5_K", "gguf:Q6_K", "nf4", "fp4",
           "kmeans")


def add_arguments(p):
    p.add_argument("input", help="checkpoint to read (.pth/.pt/.bin, .safetensors, .npz, ...)")
    p.add_argument("output", help="file to write (.safetensors/.pth/.npz, or .gguf)")
    p.add_argument("--bits", type=int, default=8, help="2 to 16 (default 8; 9-16 stored as uint16 codes)")
    p.add_argument("--group-size", type=int, default=None,
                   help="one scale per this many values along the last axis")
    p.add_argument("--block-size", type=int, default=None,
                   help="nf4/fp4: values per absmax block (default 64); gptq: columns per "
                        "lazy update (default 128)")
    p.add_argument("--scheme", choices=("symmetric", "affine"), default="symmetric")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per tensor (default without --group-size: per output channel)")
    p.add_argument("--method", choices=("rtn", "gptq"), default="rtn",
                   help="rtn: round to nearest (default); gptq: GPTQ with the layer Hessians "
                        "of --hessians (litecomp format only)")
    p.add_argument("--hessians", metavar="FILE", default=None,
                   help="layer Hessians (<layer>.hessian + <layer>.count, e.g. from "
                        "litecomp.calib.save_hessians) for --method gptq")
    p.add_argument("--act-order", action="store_true",
                   help="gptq: quantize columns in order of decreasing Hessian diagonal")
    p.add_argument("--damp", type=float, default=0.01,
                   help="gptq: damping, a fraction of mean(diag H) (default 0.01)")
    p.add_argument("--format", default="litecomp", choices=FORMATS,
                   help="litecomp (packed QTensors), gguf:<type>, nf4, fp4, or kmeans (2**bits "
                        "shared values per tensor; zeros stay zero) (default litecomp)")
    from .prune import add_selection_arguments
    add_selection_arguments(p, "quantize")
    p.add_argument("--key", default=None, help="nested entry of a torch checkpoint dict")
    p.add_argument("--quiet", action="store_true", help="print only the summary line")


def run(args):
    import os

    from .. import io
    from .._table import format_bytes, render_table
    from ..errors import ArgumentError
    from ..quant import state
    from . import renamed_option
    from .prune import selection
    targets, ignore = selection(args)
    if args.method == "gptq":
        return _run_gptq(args, targets, ignore)
    if args.hessians:
        raise ArgumentError("--hessians: only --method gptq uses Hessians")
    if args.block_size is not None and args.format not in ("nf4", "fp4"):
        raise ArgumentError(f"--block-size: only nf4 and fp4 (and gptq's lazy column block) "
                            f"take a block size, not {args.format} (use --group-size)")
    from .prune import _size
    before = _size(args.input)
    if args.format.startswith("gguf:"):
        sd = io.load(args.input, key=args.key)
        from ..quant import gguf
        kinds = gguf.write_gguf(args.output, sd, args.format[5:], targets=targets,
                                ignore=ignore)
        report = None
        nq = sum(k != "F32" for k in kinds.values())
    else:
        if args.format in ("nf4", "fp4"):
            block = renamed_option(args.block_size, args.group_size, "--block-size",
                                   f"--group-size with --format {args.format}")
            stage = {"method": args.format, "block_size": block or 64}
        elif args.format == "kmeans":
            stage = {"method": "kmeans", "bits": args.bits}
        else:
            stage = {"method": "rtn", "bits": args.bits, "scheme": args.scheme}
            if args.group_size is not None:
                stage["group_size"] = args.group_size
            elif not args.per_tensor:
                stage["axis"] = 0
        stage.update({k: v for k, v in (("targets", targets), ("ignore", ignore)) if v})
        if str(args.output).endswith(".safetensors"):
            # one tensor at a time, in and out (litecomp.compress)
            from ..compress import compress
            report = [r for r in compress(args.input, args.output, stage, key=args.key)
                      if r.methods]
        else:
            out, report = state.quantize_state_dict(io.load(args.input, key=args.key), stage)
            io.save(out, args.output)
        nq = len(report)
    after = os.path.getsize(args.output)
    if report and not args.quiet:
        rows = [[e.name, f"{e.sqnr_db:.1f}", f"{e.max_abs_err:.3g}", f"{e.cosine:.6f}",
                 format_bytes(e.bytes_before), format_bytes(e.bytes_after)] for e in report]
        print(render_table(["tensor", "SQNR dB", "max err", "cosine", "before", "after"], rows,
                           align=["<", ">", ">", ">", ">", ">"]))
    print(f"{args.input}: {format_bytes(before)} -> {args.output}: {format_bytes(after)} "
          f"({nq} tensors quantized, {args.format})")
    return 0


def print_calib_report(report):
    """The per-layer table of a calibrated stage (litecomp.calib.LayerReport rows)."""
    from .._table import render_table
    rows = [[r.name, r.method, f"{r.sparsity:.3f}", "" if r.bits is None else str(r.bits),
             "" if r.baseline_error is None else f"{r.baseline_error:.3e}", f"{r.error:.3e}",
             r.note] for r in report]
    print(render_table(["layer", "method", "sparsity", "bits", "data-free error",
                        "error", "note"], rows, align=["<", "<", ">", ">", ">", ">", "<"]))


def _run_gptq(args, targets, ignore):
    import os

    from .. import calib, io
    from .._table import format_bytes
    from ..errors import ArgumentError
    if not args.hessians:
        raise ArgumentError("--hessians: --method gptq needs the layer Hessians "
                            "(a file from litecomp.calib.save_hessians)")
    if args.format != "litecomp":
        raise ArgumentError(f"--format: gptq writes the litecomp format, not {args.format}")
    stage = {"method": "gptq", "bits": args.bits, "scheme": args.scheme,
             "group_size": None if args.per_tensor else args.group_size,
             "act_order": args.act_order, "damp": args.damp}
    if args.block_size is not None:
        stage["block_size"] = args.block_size
    stage.update({k: v for k, v in (("targets", targets), ("ignore", ignore)) if v})
    hessians = calib.load_hessians(args.hessians)
    sd = io.load(args.input, key=args.key)
    out, report = calib.apply_stage(sd, stage, hessians, baselines=True)
    io.save(out, args.output)
    if not args.quiet:
        print_calib_report(report)
    print(f"{args.input}: {format_bytes(os.path.getsize(args.input))} -> {args.output}: "
          f"{format_bytes(os.path.getsize(args.output))} ({len(report)} tensors, gptq "
          f"{args.bits}-bit)")
    return 0
