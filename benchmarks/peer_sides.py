"""The llm-compressor comparison with each side in its own fresh process (the benchmark
cases run both in one process, where the second side's peak memory includes what the
first left in the heap):

    python -m benchmarks.peer_sides [--method gptq|sparsegpt] [--shape toy|tinyllama]
                                    [--seeds 0,1,2] [--true-sequential]

Needs torch, transformers and llmcompressor (``pip install torch==2.13.0 llmcompressor``
on one command line).  Prints one line per side and seed: wall time (deep copy of the
model, oneshot, evaluation) and that of the oneshot call alone, CPU time, peak resident
memory above the start, held-out logit error; then the mean error per side and the
oneshot-time ratio per seed."""

import argparse
import subprocess
import sys

CHILD = r"""
import gc, sys, time
from benchmarks.cases import calib as bc
from benchmarks.harness import run_with_peak
method, side, shape, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
run = bc._peer_case(method, False, shape, seed, True if sys.argv[5] == "1" else None)
fn = run.litecomp if side == "litecomp" else run.anchor[1]
wall = []

def timed():
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    wall[:] = [time.perf_counter() - t0, time.process_time() - c0]
    return out

gc.collect()  # run_with_peak's own collect (0.2 s with torch loaded) is then not timed
peak, err = run_with_peak(timed)
print(f"{wall[0]:.2f} {wall[1]:.2f} {run.oneshot_seconds[side]:.2f} {peak / 2**20:.1f} "
      f"{err:.6f}")
"""


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peer_sides")
    ap.add_argument("--method", default="gptq", choices=("gptq", "sparsegpt"))
    ap.add_argument("--shape", default="toy", choices=("toy", "tinyllama"))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--true-sequential", action="store_true",
                    help="litecomp's one pass per block (oneshot(true_sequential=True))")
    args = ap.parse_args(argv)
    errs = {"litecomp": [], "llm-compressor": []}
    times = {"litecomp": [], "llm-compressor": []}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for side in ("litecomp", "llm-compressor"):
            out = subprocess.run([sys.executable, "-c", CHILD, args.method, side, args.shape,
                                  str(seed), "1" if args.true_sequential else "0"],
                                 capture_output=True, text=True, check=True)
            wall, cpu, alone, peak, err = out.stdout.strip().splitlines()[-1].split()
            errs[side].append(float(err))
            times[side].append(float(alone))
            print(f"{args.method} {args.shape} seed {seed} {side:15s} wall {wall} s "
                  f"(oneshot {alone} s)  cpu {cpu} s  peak {peak} MB  error {err}", flush=True)
    for side, e in errs.items():
        print(f"mean error {side}: {sum(e) / len(e):.5f} over {len(e)} seed(s)")
    print("oneshot time ratio (llm-compressor / litecomp) per seed: " + ", ".join(
        f"{b / a:.2f}x" for a, b in zip(times["litecomp"], times["llm-compressor"])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
