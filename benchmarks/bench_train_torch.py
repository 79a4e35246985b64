#!/usr/bin/env python3
"""PyTorch side of benchmarks/bench_train_vit.cpp: training throughput of the same small ViT
(E=64, H=4, 4 pre-norm blocks, FF=128, GELU, patch 4 on 28 x 28 x 1, CLS token, 10 classes,
batch 128; forward, mean cross-entropy, backward, AdamW step), and the ViT-Tiny forward
(B=8, 224 x 224 x 3, patch 16, E=192, H=3, 12 blocks, FF=768), written with timm's structure in
plain torch (timm is not in Debian).

    /usr/bin/python3 benchmarks/bench_train_torch.py [--repeats N] [--threads 1 2]

Prints images/s per thread count (best of N after a warm-up). BLAS: each thread count runs in a
child process with OpenBLAS's core type pinned and OpenBLAS single-threaded (PyTorch's own
threads split the work), as ../shared/bench/anchors.sh does; Debian's python3-torch otherwise
runs on the reference BLAS.
"""

import torch
from torch import nn
import torch.nn.functional as F

import torch_bench  # benchmarks/torch_bench.py


class Block(nn.Module):
    def __init__(self, e, h, ff):
        super().__init__()
        self.heads = h
        self.norm1 = nn.LayerNorm(e, eps=1e-6)
        self.qkv = nn.Linear(e, 3 * e)
        self.proj = nn.Linear(e, e)
        self.norm2 = nn.LayerNorm(e, eps=1e-6)
        self.fc1 = nn.Linear(e, ff)
        self.fc2 = nn.Linear(ff, e)

    def forward(self, x):
        b, n, e = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, e // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v) if hasattr(F, "scaled_dot_product_attention") \
            else ((q * (e // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, e))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    def __init__(self, image, channels, patch, e, h, depth, ff, classes):
        super().__init__()
        n = (image // patch) ** 2
        self.patch = nn.Conv2d(channels, e, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, e))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, e) * 0.02)
        self.blocks = nn.Sequential(*[Block(e, h, ff) for _ in range(depth)])
        self.norm = nn.LayerNorm(e, eps=1e-6)
        self.head = nn.Linear(e, classes)

    def forward(self, images):
        x = self.patch(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])




def run(threads, repeats):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ViT(28, 1, 4, 64, 4, 4, 128, 10)
    optimizer = torch.optim.AdamW(model.parameters())
    images, labels = torch.randn(128, 1, 28, 28), torch.arange(128) % 10

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    seconds = torch_bench.best_time(lambda: [step() for _ in range(5)], repeats) / 5
    print(f"torch train_vit threads={threads} images_per_second={128 / seconds:.1f}", flush=True)
    tiny = ViT(224, 3, 16, 192, 3, 12, 768, 1000).eval()
    batch = torch.randn(8, 3, 224, 224)
    with torch.no_grad():
        seconds = torch_bench.best_time(lambda: tiny(batch), repeats)
    print(f"torch vit_tiny_forward threads={threads} images_per_second={8 / seconds:.1f}",
          flush=True)


def main():
    torch_bench.main(__file__, __doc__.split("\n\n")[0], run, 5, openblas_threads=1)


if __name__ == "__main__":
    main()
