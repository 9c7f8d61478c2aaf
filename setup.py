"""Build litecomp's one extension module, litecomp._C, from csrc/*.c.

OpenMP is used when a compile-and-link test says the compiler has it; otherwise the build
goes on serially and says so loudly.  The default build is portable: SIMD code paths are
compiled with per-function target attributes and chosen at run time, so no -march flag is
needed.  Environment switches:

    LITECOMP_MARCH_NATIVE=1   add -march=native (opt-in; the wheel then only runs here)
    LITECOMP_NO_OPENMP=1      skip the OpenMP probe and build serially
    LITECOMP_DEBUG=1          -O0 -g, for gdb and sanitizers
    LITECOMP_SANITIZE=address,undefined
                              build with those -fsanitize= checks (-O1 -g, UB aborts);
                              .ci/sanitize builds so in a copy and runs the tests
"""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PROBE = r"""
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n > 0 ? 0 : 1;
}
"""


def _flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _openmp_flags(compiler):
    """Return (compile_args, link_args) that give working OpenMP, or None."""
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    exe = compiler.compiler_so[0] if getattr(compiler, "compiler_so", None) else "cc"
    tmp = tempfile.mkdtemp(prefix="litecomp-omp-")
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(PROBE)
        for cflags, lflags in candidates:
            out = os.path.join(tmp, "probe")
            cmd = [exe, *cflags, src, "-o", out, *lflags]
            try:
                ok = subprocess.run(cmd, capture_output=True).returncode == 0
                ok = ok and subprocess.run([out], capture_output=True).returncode == 0
            except OSError:
                ok = False
            if ok:
                return cflags, lflags
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


class BuildExt(build_ext):
    def build_extensions(self):
        cc = self.compiler
        unix = cc.compiler_type == "unix"
        for ext in self.extensions:
            sanitize = os.environ.get("LITECOMP_SANITIZE", "").strip()
            if unix:
                opt = ["-O0", "-g"] if _flag("LITECOMP_DEBUG") else ["-O3"]
                if sanitize:
                    # -fno-sanitize-recover: a UBSan report aborts, so a run cannot pass
                    # with reports in its log.
                    checks = ["-fsanitize=" + sanitize, "-fno-sanitize-recover=all",
                              "-fno-omit-frame-pointer"]
                    opt = ["-O1", "-g", *checks]
                    ext.extra_link_args += checks
                    ext.define_macros.append(("LC_SANITIZE", f'"{sanitize}"'))
                # -ffp-contract=off: the scalar reference must not be fused into FMAs behind
                # our back, or SIMD paths (and other compilers) could not match it bit for bit.
                ext.extra_compile_args += opt + [
                    "-std=c11", "-Wall", "-Wextra", "-ffp-contract=off",
                    "-fno-math-errno", "-fvisibility=hidden",
                ]
                if _flag("LITECOMP_MARCH_NATIVE"):
                    ext.extra_compile_args.append("-march=native")  # LITECOMP_MARCH_NATIVE=1 only
            omp = None if _flag("LITECOMP_NO_OPENMP") else (
                _openmp_flags(cc) if unix else (["/openmp"], []))
            if omp:
                ext.extra_compile_args += omp[0]
                ext.extra_link_args += omp[1]
            else:
                msg = ("litecomp: OpenMP not available (or LITECOMP_NO_OPENMP set); "
                       "building SERIAL kernels. Install a compiler with OpenMP (gcc, or "
                       "clang + libomp) for multi-threaded kernels.")
                bar = "*" * len(msg)
                print(f"\n{bar}\n{msg}\n{bar}\n", file=sys.stderr)
                import warnings
                warnings.warn(msg)
        super().build_extensions()


sources = sorted(glob.glob(os.path.join("csrc", "*.c")))

ext = Extension(
    "litecomp._C",
    sources=sources,
    include_dirs=[numpy.get_include(), "csrc"],
    depends=sorted(glob.glob(os.path.join("csrc", "*.h"))),
    define_macros=[
        # Built against NumPy 2, runs on NumPy >= 1.25 (the runtime minimum we declare).
        ("NPY_NO_DEPRECATED_API", "NPY_1_25_API_VERSION"),
        ("NPY_TARGET_VERSION", "NPY_1_25_API_VERSION"),
    ],
    extra_compile_args=[],
    extra_link_args=[],
)

if sysconfig.get_config_var("Py_GIL_DISABLED"):
    ext.define_macros.append(("LC_FREE_THREADED", "1"))

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
