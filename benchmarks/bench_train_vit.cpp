// Training throughput of the ViT of issue 15 item 9 (benchmarks/bench_train_torch.py runs the
// same model in PyTorch): E = 64, H = 4, 4 pre-norm blocks, FF = 128, GELU, patch 4 on 28 x 28
// one-channel images (49 patches + CLS), batch 128; one step = forward with cache, mean
// cross-entropy, backward, AdamW. Reports images/s. And the ViT-Tiny forward (B = 8, 224 x 224
// x 3, patch 16: L = 197, E = 192, H = 3, 12 blocks, FF = 768), images/s. Argument: threads.
#include <benchmark/benchmark.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <vector>

#include "attnlens/blocks/vision_transformer.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/cross_entropy.hpp"

namespace {

using namespace attnlens;

void keep_freed_memory() {
#if defined(__GLIBC__)
  // As in bench_multi_head: freed activation buffers stay in the process (PyTorch keeps them
  // in its allocator) instead of being unmapped and faulted in again on the next step.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
}

VisionTransformerOptions vit_options(Index image, Index channels, Index patch, Index embed,
                                     Index heads, Index depth, Index hidden, Index classes) {
  VisionTransformerOptions o;
  o.image_height = o.image_width = image;
  o.in_chans = channels;
  o.patch_size = patch;
  o.num_classes = classes;
  o.encoder.layer = {embed, heads, hidden, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = depth;
  o.encoder.final_norm = true;
  return o;
}

Tensor<float> random_images(Index batch, Index channels, Index side, Rng& rng) {
  Tensor<float> images({batch, channels, side, side});
  for (float& v : images.storage()) v = rng.normal<float>();
  return images;
}

void BM_TrainViTStep(benchmark::State& state) {
  keep_freed_memory();
  const int threads = static_cast<int>(state.range(0));
  constexpr Index batch = 128;
  Rng rng(0);
  VisionTransformer<float> vit(vit_options(28, 1, 4, 64, 4, 4, 128, 10), rng);
  VisionTransformer<float> gradient = zeros_like(vit);
  AdamW<float> optimizer(AdamWOptions{});
  const Tensor<float> images = random_images(batch, 1, 28, rng);
  std::vector<Index> labels(batch);
  for (Index b = 0; b < batch; ++b) labels[static_cast<std::size_t>(b)] = b % 10;
  EncoderForwardOptions forward;
  forward.parallel.threads = threads;
  EncoderBackwardOptions backward;
  backward.parallel.threads = threads;
  for (auto _ : state) {
    set_zero(gradient);
    VitCache<float> cache;
    const VitOutput<float> out = vit.forward(images, forward, &cache);
    const CrossEntropy<float> loss = softmax_cross_entropy<float>(out.logits.matrix(), labels);
    vit.backward(cache, Tensor<float>::from_matrix(loss.grad_logits), gradient, backward);
    optimizer.step(vit, gradient);
    benchmark::DoNotOptimize(vit.head.weight.data());
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_TrainViTStep)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

void BM_VitTinyForward(benchmark::State& state) {
  keep_freed_memory();
  const int threads = static_cast<int>(state.range(0));
  constexpr Index batch = 8;
  Rng rng(0);
  const VisionTransformer<float> vit(vit_options(224, 3, 16, 192, 3, 12, 768, 1000), rng);
  const Tensor<float> images = random_images(batch, 3, 224, rng);
  EncoderForwardOptions forward;
  forward.parallel.threads = threads;
  for (auto _ : state) {
    const VitOutput<float> out = vit.forward(images, forward);
    benchmark::DoNotOptimize(out.logits.data());
  }
  state.counters["images/s"] =
      benchmark::Counter(static_cast<double>(batch), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_VitTinyForward)
    ->ArgName("threads")
    ->Arg(1)
    ->Arg(2)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
