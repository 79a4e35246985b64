// Times MultiHeadAttention<float> self-attention (QKV projection, attention, output
// projection) on the shapes of ../shared/bench/anchors.sh, reporting GFLOP/s with the
// anchors' FLOP count B*(8*L*E^2 + 4*L^2*E). Arguments: B, L, E, H, threads.
#include <benchmark/benchmark.h>

#include <array>

#include "attnlens/attention/multi_head.hpp"

namespace {

using attnlens::Index;

void BM_MultiHeadAttention(benchmark::State& state) {
  const Index B = state.range(0), L = state.range(1), E = state.range(2), H = state.range(3);
  const int threads = static_cast<int>(state.range(4));
  attnlens::Rng rng(0);
  const attnlens::MultiHeadAttention<float> mha({E, H}, rng);
  attnlens::Tensor<float> x({B, L, E});
  for (auto& v : x.storage()) v = rng.normal<float>();
  attnlens::MultiHeadForwardOptions options;
  options.parallel.threads = threads;
  Eigen::setNbThreads(threads);
  for (auto _ : state) {
    auto result = mha.forward(x, {}, options);
    benchmark::DoNotOptimize(result.output.data());
  }
  const double flops =
      static_cast<double>(B) * (8.0 * L * E * E + 4.0 * L * L * static_cast<double>(E));
  state.counters["GFLOPS"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void canonical_shapes(benchmark::internal::Benchmark* b) {
  for (int threads : {1, 2})
    for (auto shape : {std::array<int, 4>{1, 128, 512, 8},
                       {1, 512, 512, 8},
                       {1, 2048, 512, 8},
                       {8, 256, 768, 12},
                       {1, 4096, 512, 8}})
      b->Args({shape[0], shape[1], shape[2], shape[3], threads});
  b->ArgNames({"B", "L", "E", "H", "threads"});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

BENCHMARK(BM_MultiHeadAttention)->Apply(canonical_shapes);

}  // namespace

BENCHMARK_MAIN();
