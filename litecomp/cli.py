"""The ``litecomp`` command.  Each subcommand is a module in litecomp/commands/ with
``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; the list of them is
``litecomp.commands.COMMANDS``."""

import argparse
import importlib
import sys

from .commands import COMMANDS
from .errors import LitecompError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="litecomp",
        description="Model compression for NumPy arrays and PyTorch state dicts.")
    p.add_argument("--version", action="store_true", help="print version and build info")
    p.add_argument("--threads", type=int, default=None,
                   help="kernel threads (default: LITECOMP_NUM_THREADS or all cores)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMANDS:
        mod = importlib.import_module(f"litecomp.commands.{modname}")
        sp = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(sp)
        sp.set_defaults(_run=mod.run)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.threads is not None:
            from . import set_num_threads
            set_num_threads(args.threads)
        if args.version:
            from .commands.info import print_info
            print_info()
            return 0
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except LitecompError as exc:
        print(f"litecomp: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `litecomp inspect big.pth | head`
        return 0
    except KeyboardInterrupt:  # Ctrl-C: the work stops between tensors, nothing is written
        print("litecomp: interrupted; no output was written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
