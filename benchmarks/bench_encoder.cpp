// Times TransformerEncoder<float>::forward (no maps) on the shapes that
// benchmarks/bench_encoder_torch.py runs through torch.nn.TransformerEncoder, reporting GFLOP/s
// with the FLOP count num_layers * B * (8*L*E^2 + 4*L^2*E + 4*L*E*FF): the anchors' attention
// block plus the two feed-forward GEMMs. Arguments: B, L, E, H, FF, layers, threads.
#include <benchmark/benchmark.h>

#include <array>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "attnlens/blocks/encoder.hpp"

namespace {

using attnlens::Index;

void BM_TransformerEncoder(benchmark::State& state) {
#if defined(__GLIBC__)
  // As in bench_multi_head: freed activation buffers stay in the process instead of being
  // unmapped and faulted in again on the next call (PyTorch keeps them in its allocator).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  const Index B = state.range(0), L = state.range(1), E = state.range(2), H = state.range(3);
  const Index FF = state.range(4), layers = state.range(5);
  const int threads = static_cast<int>(state.range(6));
  attnlens::Rng rng(0);
  attnlens::EncoderOptions options;
  options.layer = {E, H, FF, attnlens::Activation::relu, 1e-5, false, true};
  options.num_layers = layers;
  const attnlens::TransformerEncoder<float> encoder(options, rng);
  attnlens::Tensor<float> x({B, L, E});
  for (auto& v : x.storage()) v = rng.normal<float>();
  attnlens::EncoderForwardOptions forward;
  forward.parallel.threads = threads;
  Eigen::setNbThreads(threads);
  for (auto _ : state) {
    auto result = encoder.forward(x, {}, forward);
    benchmark::DoNotOptimize(result.output.data());
  }
  const double l = static_cast<double>(L), e = static_cast<double>(E);
  const double flops = static_cast<double>(layers * B) *
                       (8.0 * l * e * e + 4.0 * l * l * e + 4.0 * l * e * static_cast<double>(FF));
  state.counters["GFLOPS"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void encoder_shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (auto shape : {std::array<int, 6>{1, 128, 256, 8, 1024, 6},
                       {8, 128, 256, 8, 1024, 6},
                       {1, 512, 512, 8, 2048, 6},
                       {8, 256, 768, 12, 3072, 2}})
      b->Args({shape[0], shape[1], shape[2], shape[3], shape[4], shape[5], threads});
  b->ArgNames({"B", "L", "E", "H", "FF", "layers", "threads"});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_TransformerEncoder)->Apply(encoder_shapes);

}  // namespace

BENCHMARK_MAIN();
