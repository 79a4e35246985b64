#!/usr/bin/env python3
"""PyTorch side of BM_MultiHeadForwardBackward (benchmarks/bench_multi_head.cpp) and of
`attnlens bench --backward`: torch.nn.MultiheadAttention (batch_first) forward + backward of
the whole block on the canonical shapes of ../shared/bench/anchors.sh, with 3x the forward's
FLOP count, 3 * B * (8*L*E^2 + 4*L^2*E).

    /usr/bin/python3 benchmarks/bench_multi_head_torch.py [--repeats N] [--threads 1 2]

The input requires grad and every parameter does, so autograd computes what attnlens's
backward computes (the input's and every parameter's gradient). Prints one line per shape in
the format of `attnlens bench`: ms per forward+backward (best of N after a warm-up) and GFLOP/s.
BLAS: as bench_encoder_torch.py, each thread count runs in a child process with OpenBLAS's core
type pinned (Debian's python3-torch otherwise runs on the reference BLAS or SSE3 kernels).
"""

import torch
from torch import nn

import torch_bench  # benchmarks/torch_bench.py

SHAPES = [(1, 128, 512, 8), (1, 512, 512, 8), (1, 2048, 512, 8), (8, 256, 768, 12),
          (1, 4096, 512, 8)]


def flops(b, l, e):
    return 3.0 * b * (8.0 * l * e * e + 4.0 * l * l * e)




def run_shapes(threads, repeats):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    for b, l, e, h in SHAPES:
        mha = nn.MultiheadAttention(e, h, batch_first=True)
        x = torch.randn(b, l, e, requires_grad=True)
        dy = torch.randn(b, l, e)

        def step():
            mha.zero_grad(set_to_none=True)
            x.grad = None
            out, _ = mha(x, x, x, need_weights=False)
            out.backward(dy)

        seconds = torch_bench.best_time(step, repeats)
        print(f"torch B={b} L={l} E={e} H={h} threads={threads} pass=forward+backward "
              f"ms={seconds * 1e3:.2f} gflops={flops(b, l, e) / seconds * 1e-9:.1f}", flush=True)


def main():
    torch_bench.main(__file__, __doc__.split("\n\n")[0], run_shapes, 7)


if __name__ == "__main__":
    main()
