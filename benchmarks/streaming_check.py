"""The streaming bar, run by hand (it writes GBs to /tmp and deletes them):

    python -m benchmarks.streaming_check [--gb 6] [--largest-mb 256] [--dir /tmp]

Makes a synthetic safetensors checkpoint of many float32 tensors (the largest
``--largest-mb``), runs ``litecomp compress`` to int4 (rtn, groups of 128) in a child
process, reads the child's peak resident set (VmHWM) and checks every output tensor against
the same stage run on that tensor in memory.  Prints one line of numbers."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

CHILD = r"""
import sys
from litecomp.compress import compress
def hwm():
    return [int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
base = hwm()
compress(sys.argv[1], sys.argv[2], [{"method": "rtn", "bits": 4, "group_size": 128}])
print(base, hwm())
"""


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=6.0)
    ap.add_argument("--largest-mb", type=int, default=256)
    ap.add_argument("--dir", default="/tmp")
    a = ap.parse_args(argv)
    import litecomp
    from litecomp.io.stream import StreamWriter
    folder = tempfile.mkdtemp(dir=a.dir, prefix="litecomp-stream-")
    try:
        src, out = os.path.join(folder, "big.safetensors"), os.path.join(folder, "q.safetensors")
        big = a.largest_mb * 2 ** 20 // 4
        rows = 4096
        shapes, total = [], 0
        while total < a.gb * 2 ** 30:
            n = big if len(shapes) % 8 == 0 else big // 4
            shapes.append((rows, n // rows))
            total += n * 4
        t0 = time.perf_counter()
        with StreamWriter(src, fsync=False) as w:
            for i, s in enumerate(shapes):
                w.add(f"layers.{i}.weight", litecomp.random.normal(s, 0, 0.02, seed=i))
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", CHILD, src, out], capture_output=True,
                           text=True)
        t_run = time.perf_counter() - t0
        if p.returncode:
            print(p.stderr)
            return 1
        base, peak = map(int, p.stdout.split())
        stage = {"method": "rtn", "bits": 4, "group_size": 128}
        bad = 0
        with litecomp.open(out) as got:
            for i, s in enumerate(shapes):
                name = f"layers.{i}.weight"
                want, _ = litecomp.quant.quantize_state_dict(
                    {name: litecomp.random.normal(s, 0, 0.02, seed=i)}, stage)
                bad += sum(not np.array_equal(got[k], v) for k, v in want.items())
        print(f"input {total / 2 ** 30:.2f} GiB in {len(shapes)} tensors (largest "
              f"{a.largest_mb} MiB), output {os.path.getsize(out) / 2 ** 30:.2f} GiB; "
              f"compress {t_run:.1f} s; peak RSS (VmHWM) {peak / 2 ** 20:.0f} MiB "
              f"({(peak - base) / 2 ** 20:.0f} MiB above start, "
              f"{(peak - base) / (big * 4):.2f}x the largest tensor); "
              f"tensors differing from the in-memory result: {bad}; write {t_write:.1f} s")
        return 0 if bad == 0 and peak < 2 ** 30 else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
