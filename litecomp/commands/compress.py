"""litecomp compress: run a recipe over a checkpoint and write a file a runtime loads."""

NAME = "compress"
HELP = ("run a recipe (shrink / prune / sparsegpt / wanda / gptq / rtn / gguf stages) over a "
        "checkpoint, streaming, and write litecomp, safetensors, compressed-tensors or GGUF; "
        "prints and saves a report")


def add_arguments(p):
    from ..compress import FORMATS
    p.add_argument("input", metavar="IN", help="checkpoint (file, shard index or HF folder)")
    p.add_argument("output", metavar="OUT",
                   help="output: a .safetensors file (litecomp, safetensors), a folder "
                        "(compressed-tensors) or a .gguf file")
    p.add_argument("--recipe", metavar="FILE", required=True,
                   help="the recipe: a .yaml/.json list of stages (see docs/export.md)")
    p.add_argument("--format", choices=FORMATS, default="litecomp",
                   help="litecomp (compact QTensors), safetensors (dense, fake-quantized), "
                        "compressed-tensors (transformers/vLLM), gguf (llama.cpp)")
    p.add_argument("--config", metavar="PATH", default=None,
                   help="the model's config.json or HF folder (default: IN when a folder)")
    p.add_argument("--tokenizer", metavar="PATH", default=None,
                   help="tokenizer.json for GGUF (default: the config folder's)")
    p.add_argument("--imatrix", metavar="FILE", default=None,
                   help="a GGUF imatrix file: importance weights for GGUF K-quants")
    p.add_argument("--hessians", metavar="FILE", default=None,
                   help="saved Hessians (a file from litecomp.calib.save_hessians) for the "
                        "calibrated stages gptq, sparsegpt and wanda")
    p.add_argument("--max-shard-size", default=None, help="shard the output, e.g. 5GB")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no table")


def run(args):
    import os

    from ..compress import compress, report_table
    config = args.config
    if config is None and os.path.isdir(args.input) and \
            os.path.isfile(os.path.join(args.input, "config.json")):
        config = args.input
    report_path = os.fspath(args.output).rstrip("/") + ".report.json"
    rows = compress(args.input, args.output, args.recipe, format=args.format, config=config,
                    tokenizer=args.tokenizer, imatrix=args.imatrix, hessians=args.hessians,
                    max_shard_size=args.max_shard_size, progress=not args.quiet,
                    report_path=report_path)
    table = report_table(rows)
    print(table if not args.quiet else table.splitlines()[-1])
    print(f"report: {report_path}")
    return 0
