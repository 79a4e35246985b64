// Times MultiHeadAttention<float> self-attention (QKV projection, attention, output
// projection) on the fused engine, on the shapes of ../shared/bench/anchors.sh plus
// L = 16384 (E = 512, H = 8), with 1 and 2 threads. Counters: GFLOPS with the anchors' FLOP
// count B*(8*L*E^2 + 4*L^2*E), and workspace_bytes, the attention workspace of the fused
// engine (fused_workspace_bytes). Arguments: B, L, E, H, threads. BM_MultiHeadForwardBackward
// times the forward pass filling its cache and the backward pass on the same shapes, with 3x
// the forward's FLOPs (benchmarks/bench_multi_head_torch.py times PyTorch's the same way).
#include <benchmark/benchmark.h>

#include <array>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/parameters.hpp"

namespace {

using attnlens::Index;

void BM_MultiHeadAttention(benchmark::State& state) {
#if defined(__GLIBC__)
  // Freed megabyte buffers stay in the process, as with ONNX Runtime's arena (see attnlens
  // bench): otherwise every call faults its q, k, v and outputs in again.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  const Index B = state.range(0), L = state.range(1), E = state.range(2), H = state.range(3);
  const int threads = static_cast<int>(state.range(4));
  attnlens::Rng rng(0);
  const attnlens::MultiHeadAttention<float> mha({E, H}, rng);
  attnlens::Tensor<float> x({B, L, E});
  for (auto& v : x.storage()) v = rng.normal<float>();
  attnlens::MultiHeadForwardOptions options;
  options.engine = attnlens::AttentionEngine::fused;
  options.parallel.threads = threads;
  for (auto _ : state) {
    auto result = mha.forward(x, {}, options);
    benchmark::DoNotOptimize(result.output.data());
  }
  const double flops =
      static_cast<double>(B) * (8.0 * L * E * E + 4.0 * L * L * static_cast<double>(E));
  state.counters["GFLOPS"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["workspace_bytes"] = static_cast<double>(attnlens::fused_workspace_bytes<float>(
      {options.tiling, options.parallel}, B * H, L, E / H, E / H, 0));
}

void BM_MultiHeadForwardBackward(benchmark::State& state) {
#if defined(__GLIBC__)
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
  const Index B = state.range(0), L = state.range(1), E = state.range(2), H = state.range(3);
  attnlens::Rng rng(0);
  const attnlens::MultiHeadAttention<float> mha({E, H}, rng);
  attnlens::MultiHeadAttention<float> gradient = attnlens::zeros_like(mha);
  attnlens::Tensor<float> x({B, L, E}), doutput({B, L, E});
  for (auto& v : x.storage()) v = rng.normal<float>();
  for (auto& v : doutput.storage()) v = rng.normal<float>();
  attnlens::MultiHeadForwardOptions options;
  options.engine = attnlens::AttentionEngine::fused;
  options.parallel.threads = static_cast<int>(state.range(4));
  attnlens::MultiHeadBackwardOptions backward;
  backward.parallel = options.parallel;
  for (auto _ : state) {
    attnlens::MultiHeadCache<float> cache;
    mha.forward(x, {}, options, &cache);
    auto inputs = mha.backward(cache, doutput, gradient, backward);
    benchmark::DoNotOptimize(inputs.query.data());
  }
  const double flops =
      3.0 * static_cast<double>(B) * (8.0 * L * E * E + 4.0 * L * L * static_cast<double>(E));
  state.counters["GFLOPS"] =
      benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void shapes(benchmark::internal::Benchmark* b, bool long_sequence) {
  for (int threads : {1, 2}) {
    if (long_sequence) {
      b->Args({1, 16384, 512, 8, threads});
      continue;
    }
    for (auto shape : {std::array<int, 4>{1, 128, 512, 8},
                       {1, 512, 512, 8},
                       {1, 2048, 512, 8},
                       {8, 256, 768, 12},
                       {1, 4096, 512, 8}})
      b->Args({shape[0], shape[1], shape[2], shape[3], threads});
  }
  b->ArgNames({"B", "L", "E", "H", "threads"});
  b->Unit(benchmark::kMillisecond)->UseRealTime();
}

// The canonical shapes take 1 to 500 ms a run: a second of runs each.
BENCHMARK(BM_MultiHeadAttention)
    ->Apply([](benchmark::internal::Benchmark* b) { shapes(b, false); })
    ->MinTime(1.0);
// L = 16384 does 584 GFLOP a run (several seconds): two runs, the faster is the one to read.
BENCHMARK(BM_MultiHeadAttention)
    ->Name("BM_MultiHeadAttention/long")
    ->Apply([](benchmark::internal::Benchmark* b) { shapes(b, true); })
    ->Iterations(1)
    ->Repetitions(2)
    ->ReportAggregatesOnly(false);

BENCHMARK(BM_MultiHeadForwardBackward)
    ->Apply([](benchmark::internal::Benchmark* b) { shapes(b, false); })
    ->MinTime(1.0);

}  // namespace

BENCHMARK_MAIN();
