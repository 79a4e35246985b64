#!/usr/bin/env python3
"""PyTorch side of benchmarks/bench_encoder.cpp: torch.nn.TransformerEncoder (batch_first,
eval, no_grad, so PyTorch 1.13 takes its fused inference fast path) on the same shapes and
threads, with the same FLOP count num_layers * B * (8*L*E^2 + 4*L^2*E + 4*L*E*FF).

    /usr/bin/python3 benchmarks/bench_encoder_torch.py [--repeats N] [--threads 1 2]

Prints one line per shape: milliseconds per forward pass (median of N) and GFLOP/s, in the
order and naming of the Google Benchmark binary, to put the two side by side.

Debian's python3-torch 1.13 calls whatever libblas.so.3 the system selects: netlib's reference
BLAS (a few GFLOP/s) unless OpenBLAS is installed (apt-get install libopenblas0-pthread), so
the first line prints the BLAS library in use. Debian's OpenBLAS 0.3.21 also mis-detects recent
Xeons (SSE3 kernels), so each thread count runs in a child process with OPENBLAS_CORETYPE
pinned (SkylakeX with AVX-512, else Haswell) and OPENBLAS_NUM_THREADS / OMP_NUM_THREADS set,
as ../shared/bench/anchors.sh does for its PyTorch anchor.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

SHAPES = [  # B, L, E, H, FF, layers (as encoder_shapes() in bench_encoder.cpp)
    (1, 128, 256, 8, 1024, 6),
    (8, 128, 256, 8, 1024, 6),
    (1, 512, 512, 8, 2048, 6),
    (8, 256, 768, 12, 3072, 2),
]


def flops(b, l, e, ff, layers):
    return layers * b * (8.0 * l * e * e + 4.0 * l * l * e + 4.0 * l * e * ff)


def time_forward(encoder, x, repeats):
    with torch.no_grad():
        encoder(x)  # warm-up
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(x)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def blas_library():
    """The BLAS shared library this process has mapped (torch loads it at import)."""
    with open("/proc/self/maps") as maps:
        names = {line.split()[-1] for line in maps if "blas" in line.lower()}
    return ", ".join(sorted(os.path.realpath(n) for n in names)) or "unknown"


def run_shapes(threads, repeats):
    torch.set_num_threads(threads)
    for b, l, e, h, ff, layers in SHAPES:
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(e, h, ff, dropout=0.0, batch_first=True)
        encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        x = torch.randn(b, l, e)
        seconds = time_forward(encoder, x, repeats)
        print(f"torch_TransformerEncoder/B:{b}/L:{l}/E:{e}/H:{h}/FF:{ff}/layers:{layers}/"
              f"threads:{threads}  {seconds * 1e3:9.2f} ms  "
              f"GFLOPS={flops(b, l, e, ff, layers) / seconds * 1e-9:.1f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per shape")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="thread counts, each run in its own process (default: 1 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_shapes(args.threads[0], args.repeats)
        return
    print(f"torch {torch.__version__}, BLAS: {blas_library()}", flush=True)
    with open("/proc/cpuinfo") as cpuinfo:
        core = "SkylakeX" if "avx512f" in cpuinfo.read() else "Haswell"
    for threads in args.threads:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
        env.setdefault("OPENBLAS_CORETYPE", core)
        subprocess.run([sys.executable, __file__, "--child", "--threads", str(threads),
                        "--repeats", str(args.repeats)], env=env, check=True)


if __name__ == "__main__":
    main()
