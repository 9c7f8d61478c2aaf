"""litecomp info: version, build and machine facts."""

NAME = "info"
HELP = "print version, build options (OpenMP, SIMD) and thread settings"


def add_arguments(p):
    p.add_argument("--json", action="store_true", help="print JSON")


def print_info(as_json=False):
    import json

    from .. import build_info
    info = build_info()
    if as_json:
        print(json.dumps(info, indent=2))
        return
    print(f"litecomp {info['version']}")
    for k, v in info.items():
        if k != "version":
            print(f"  {k:16s} {v}")


def run(args):
    print_info(args.json)
    return 0
