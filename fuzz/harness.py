"""Run one fuzz target under atheris (libFuzzer for Python), or list them.

    fuzz/run --list                 target names, one a line
    fuzz/run NAME SECONDS [-- LIBFUZZER_ARGS...]

A run mutates the seeds (fuzz/seeds/NAME) into a working corpus in
$LITECOMP_FUZZ_DIR/NAME (default /tmp/litecomp-fuzz), with litecomp's Python code
instrumented for edge coverage.  A crash -- any exception other than a litecomp error --,
a hang (10 s on one input) or memory past 1 GiB stops the run and leaves the input in
fuzz/crashes/; after the fix it moves to fuzz/regressions/NAME/, which the test suite
replays.  The last line is a summary: executions, edges (libFuzzer's `cov`), features,
corpus size, crashes, seconds.  atheris comes with the `fuzz` extra:
`pip install -e ".[fuzz]"`.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
TIMEOUT_S = 10
RSS_LIMIT_MB = 1024


def _worker(name, libfuzzer_args):
    """In the child: instrument litecomp, then hand the target to libFuzzer."""
    import atheris
    with atheris.instrument_imports(include=["litecomp"]):
        import litecomp  # noqa: F401
        import litecomp.quant.gguf  # noqa: F401
    sys.path.insert(0, HERE)
    import targets
    t = targets.TARGETS[name]
    tmp = tempfile.mkdtemp(prefix=f"litecomp-fuzz-{name}-", dir=_scratch())

    def one(data):
        targets.run_one(t, data, tmp)

    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def _scratch():
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def _summary(name, seconds, log, corpus, crashes_before, crash_dir):
    execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    rss = re.findall(r"stat::peak_rss_mb:\s*(\d+)", log)
    cov = re.findall(r"\bcov: (\d+) ft: (\d+)", log)
    crashes = sorted(c for c in set(os.listdir(crash_dir)) - crashes_before
                     if c.startswith(name + "-"))
    return {
        "target": name, "seconds": seconds,
        "executions": int(execs[-1]) if execs else None,
        "edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus": len(os.listdir(corpus)),
        "peak_rss_mb": int(rss[-1]) if rss else None,
        "crashes": [os.path.join(crash_dir, c) for c in crashes],
    }


def main(argv):
    if argv[:1] == ["--worker"]:
        return _worker(argv[1], argv[2:])       # instruments litecomp before importing it
    sys.path.insert(0, HERE)
    import targets
    if argv[:1] == ["--list"]:
        print("\n".join(targets.names()))
        return 0
    if len(argv) < 2 or argv[0] not in targets.TARGETS:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        print("targets: " + ", ".join(targets.names()), file=sys.stderr)
        return 2
    name, seconds = argv[0], int(argv[1])
    extra = argv[3:] if argv[2:3] == ["--"] else argv[2:]
    work = os.environ.get("LITECOMP_FUZZ_DIR", os.path.join(tempfile.gettempdir(),
                                                            "litecomp-fuzz"))
    corpus = os.path.join(work, name)
    os.makedirs(corpus, exist_ok=True)
    crash_dir = os.path.join(HERE, "crashes")
    os.makedirs(crash_dir, exist_ok=True)
    before = set(os.listdir(crash_dir))
    args = [f"-max_total_time={seconds}", f"-timeout={TIMEOUT_S}",
            f"-rss_limit_mb={RSS_LIMIT_MB}", "-print_final_stats=1", "-print_pcs=0",
            f"-artifact_prefix={crash_dir}/{name}-", *extra,
            corpus, targets.TARGETS[name].seed_dir()]
    log_path = os.path.join(work, f"{name}.log")
    with open(log_path, "w") as log:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", name, *args],
                           stderr=subprocess.STDOUT, stdout=log, cwd=HERE)
    with open(log_path) as log:
        text = log.read()
    s = _summary(name, seconds, text, corpus, before, crash_dir)
    s["exit"] = p.returncode
    s["log"] = log_path
    if p.returncode != 0:
        tail = text.strip().splitlines()[-40:]
        print("\n".join(tail), file=sys.stderr)
    print(json.dumps(s))
    return 0 if p.returncode == 0 and not s["crashes"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
