#!/usr/bin/env python3
"""PyTorch side of benchmarks/bench_encoder.cpp: torch.nn.TransformerEncoder (batch_first,
eval, no_grad, so PyTorch 1.13 takes its fused inference fast path) on the same shapes and
threads, with the same FLOP count num_layers * B * (8*L*E^2 + 4*L^2*E + 4*L*E*FF).

    /usr/bin/python3 benchmarks/bench_encoder_torch.py [--repeats N]

Prints one line per shape: milliseconds per forward pass (median of N) and GFLOP/s, in the
order and naming of the Google Benchmark binary, to put the two side by side. The first
line says which BLAS this torch was built with: Debian's python3-torch 1.13 uses
BLAS_INFO=generic (the reference BLAS, a few GFLOP/s), so compare against a pip or conda build
(MKL / OpenBLAS) for a meaningful baseline.
"""

import argparse
import re
import statistics
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per shape")
    args = parser.parse_args()
    blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    print(f"torch {torch.__version__}, BLAS_INFO={blas.group(1) if blas else 'unknown'}")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for b, l, e, h, ff, layers in SHAPES:
            torch.manual_seed(0)
            layer = nn.TransformerEncoderLayer(e, h, ff, dropout=0.0, batch_first=True)
            encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
            x = torch.randn(b, l, e)
            seconds = time_forward(encoder, x, args.repeats)
            print(f"torch_TransformerEncoder/B:{b}/L:{l}/E:{e}/H:{h}/FF:{ff}/layers:{layers}/"
                  f"threads:{threads}  {seconds * 1e3:9.2f} ms  "
                  f"GFLOPS={flops(b, l, e, ff, layers) / seconds * 1e-9:.1f}")


if __name__ == "__main__":
    main()
