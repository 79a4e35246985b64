"""Shared by the PyTorch benchmark scripts: best-of-N timing, and running each thread count in
a child process with OpenBLAS's core type pinned (Debian's python3-torch otherwise runs on the
reference BLAS or SSE3 kernels), as ../shared/bench/anchors.sh does."""

import argparse
import os
import subprocess
import sys
import time


def best_time(f, repeats):
    """The shortest of `repeats` timed calls of f, after one warm-up call."""
    f()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        samples.append(time.perf_counter() - start)
    return min(samples)


def main(script, description, run, default_repeats, openblas_threads=None):
    """The command line of a benchmark script: --repeats, --threads; run(threads, repeats) runs
    in a child per thread count. OpenBLAS gets `openblas_threads` threads (default: as many as
    PyTorch)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--repeats", type=int, default=default_repeats)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run(args.child, args.repeats)
        return
    core = "SkylakeX" if "avx512f" in open("/proc/cpuinfo").read() else "Haswell"
    for threads in args.threads:
        blas = str(openblas_threads or threads)
        env = dict(os.environ, OPENBLAS_CORETYPE=core, OPENBLAS_NUM_THREADS=blas,
                   OMP_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, script, "--child", str(threads), "--repeats",
                        str(args.repeats)], env=env, check=True)
