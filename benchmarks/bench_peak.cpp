// The core's float FMA peak, the ceiling the GEMM and attention GFLOP/s of docs/performance.md
// are read against: 24 independent chains of AVX-512 fused multiply-adds (enough to cover the
// FMA latency on every x86 core seen here), 32 FLOPs each. On a CPU without AVX-512 it reports
// nothing (the benchmark is skipped).
#include <benchmark/benchmark.h>

#include "attnlens/core/detail/gemm_avx512.hpp"

namespace {

#if ATTNLENS_HAS_AVX512_KERNELS
constexpr int k_chains = 24;

ATTNLENS_AVX512 float fma_chains(long steps) {
  __m512 acc[k_chains];
  for (int i = 0; i < k_chains; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i));
  const __m512 a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-4f);
  for (long k = 0; k < steps; ++k) {
#pragma GCC unroll 24
    for (int i = 0; i < k_chains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  float sum = 0;
  for (int i = 0; i < k_chains; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  return sum;
}
#endif

void BM_FmaPeak(benchmark::State& state) {
#if ATTNLENS_HAS_AVX512_KERNELS
  if (!attnlens::detail::use_avx512()) {
    state.SkipWithError("no AVX-512 on this CPU");
    return;
  }
  long steps = 1 << 20;
  for (auto _ : state) {
    benchmark::DoNotOptimize(steps);  // opaque: the chains are run on every iteration
    benchmark::DoNotOptimize(fma_chains(steps));
  }
  // Printed as FLOP/s with an SI prefix (e.g. 117G/s).
  state.counters["FLOP/s"] = benchmark::Counter(static_cast<double>(steps) * k_chains * 32,
                                                benchmark::Counter::kIsIterationInvariantRate);
#else
  state.SkipWithError("built without the AVX-512 kernels");
#endif
}
BENCHMARK(BM_FmaPeak)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
