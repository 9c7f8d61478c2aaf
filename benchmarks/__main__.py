"""Run the registered benchmark cases and print litecomp beside its anchors.

    python -m benchmarks              # full sizes, 5 repeats, median
    python -m benchmarks --quick      # tiny sizes, one repeat (CI: keeps this code alive)
    python -m benchmarks --filter copy,prune --json out.json
"""

import argparse
import datetime
import json
import os
import platform
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import litecomp  # noqa: E402
from litecomp._table import format_bytes, render_table  # noqa: E402

from .harness import load_cases, measure_bandwidth, run_case  # noqa: E402


def _fmt_time(s):
    if s is None:
        return "-"
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat")
    p.add_argument("--filter", default=None, help="comma-separated case names or groups")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for litecomp and the anchors (default: all cores)")
    p.add_argument("--json", default="benchmark-results.json", help="where to write JSON")
    args = p.parse_args(argv)

    threads = args.threads or litecomp._runtime.available_cores()
    litecomp.set_num_threads(threads)
    cases = load_cases(args.filter)
    if not cases:
        print(f"no benchmark case matches {args.filter!r}", file=sys.stderr)
        return 2
    info = litecomp.build_info()
    bw = measure_bandwidth(args.quick)
    print(f"litecomp {info['version']}  simd={info['simd']}  openmp={info['openmp']}  "
          f"threads={threads}  {platform.processor() or platform.machine()}")
    print(f"memory bandwidth (stream copy, read+write): {bw / 1e9:.1f} GB/s"
          + ("  [quick mode: tiny sizes, not representative]" if args.quick else ""))
    print()

    results = []
    for c in cases:
        print(f"  running {c.name} ...", file=sys.stderr, flush=True)
        results.append(run_case(c, args.quick, bw, threads))

    rows = []
    for r in results:
        anchor = r.anchor if not r.missing else f"{r.anchor} (MISSING: {r.missing})"
        rows.append([
            r.case, _fmt_time(r.litecomp_s), anchor, _fmt_time(r.anchor_s),
            f"{r.ratio:.1f}x" if r.ratio is not None else "-",
            f"{r.roofline:.0%}" if r.roofline is not None else "-",
            format_bytes(r.litecomp_peak) if r.litecomp_peak is not None else "-",
            format_bytes(r.anchor_peak) if r.anchor_peak is not None else "-",
        ])
    print(render_table(["case", "litecomp", "anchor", "anchor time", "speedup",
                        "roofline", "peak mem", "anchor peak"], rows,
                       align=["<", ">", "<", ">", ">", ">", ">", ">"]))
    print("\nspeedup = anchor time / litecomp time (median); roofline = bytes moved / time "
          "/ bandwidth; peak mem = peak resident memory above the start of the call")
    notes = [f"  {r.case}: {r.notes}" for r in results if r.notes]
    if notes:
        print("notes:\n" + "\n".join(notes))

    doc = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "threads": threads, "bandwidth_bytes_per_s": bw,
        "build_info": info, "results": [r.__dict__ for r in results],
    }
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
