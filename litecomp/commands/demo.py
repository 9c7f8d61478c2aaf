"""litecomp demo: the whole compression workflow on the built-in example model."""

NAME = "demo"
HELP = "run the compression workflow on the built-in example model (under a minute)"


def add_arguments(p):
    p.add_argument("--small", action="store_true",
                   help="use a tiny model (seconds; for tests and quick looks)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="keep the files the demo writes in DIR (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0, help="seed of the example model")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of steps to run (default: all)")


def run(args):
    from ..demo import run_demo
    return run_demo(small=args.small, out=args.out, seed=args.seed,
                    steps=args.steps.split(",") if args.steps else None)
