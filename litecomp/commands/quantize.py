"""litecomp quantize: quantize a checkpoint's weights and write a compact file."""

NAME = "quantize"
HELP = "quantize a checkpoint (litecomp packed format, GGUF, or NF4) and report the error"

FORMATS = ("litecomp", "gguf:Q8_0", "gguf:Q4_0", "gguf:Q4_1", "gguf:Q5_0", "gguf:Q5_1",
           "gguf:Q4_K", "gguf:Q6_K", "nf4", "fp4", "kmeans")


def add_arguments(p):
    p.add_argument("input", help="checkpoint to read (.pth/.pt/.bin, .safetensors, .npz, ...)")
    p.add_argument("output", help="file to write (.safetensors/.pth/.npz, or .gguf)")
    p.add_argument("--bits", type=int, default=8, help="2, 3, 4, 5, 6 or 8 (default 8)")
    p.add_argument("--group-size", type=int, default=None,
                   help="one scale per this many values along the last axis")
    p.add_argument("--block-size", type=int, default=None,
                   help="nf4/fp4: values per absmax block (default 64)")
    p.add_argument("--scheme", choices=("symmetric", "affine"), default="symmetric")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per tensor (default without --group-size: per output channel)")
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
    from ..select import Selector
    from . import renamed_option
    from .prune import selection
    targets, ignore = selection(args)
    if args.block_size is not None and args.format not in ("nf4", "fp4"):
        raise ArgumentError(f"--block-size: only nf4 and fp4 take a block size, not "
                            f"{args.format} (use --group-size)")
    sd = io.load(args.input, key=args.key)
    before = os.path.getsize(args.input) if os.path.isfile(args.input) else \
        sum(v.nbytes for v in sd.values())
    if args.format.startswith("gguf:"):
        from ..quant import gguf
        kinds = gguf.write_gguf(args.output, sd, args.format[5:],
                                select=Selector(targets, ignore))
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
        out, report = state.quantize_state_dict(sd, stage)
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
