// Times SafeTensors::parse on headers of 1k to 160k one-element tensors (docs/limits.md: the
// parse is linear; 40k tensors once took 12-27 s). Counter: tensors per second, which stays
// flat as the count grows if the parse is linear. Argument: the number of tensors.
#include <benchmark/benchmark.h>

#include <string>

#include "attnlens/io/safetensors.hpp"

namespace {

void BM_ParseHeader(benchmark::State& state) {
  const auto count = static_cast<int>(state.range(0));
  attnlens::io::SafeTensorsWriter writer;
  for (int i = 0; i < count; ++i)
    writer.add("layers." + std::to_string(i) + ".weight", attnlens::Tensor<float>({1}));
  const std::string bytes = writer.bytes();
  for (auto _ : state) {
    auto file = attnlens::io::SafeTensors::parse(bytes);
    benchmark::DoNotOptimize(file.size());
  }
  state.counters["tensors_per_s"] =
      benchmark::Counter(static_cast<double>(count) * static_cast<double>(state.iterations()),
                         benchmark::Counter::kIsRate);
  state.counters["header_bytes"] = static_cast<double>(bytes.size());
}

BENCHMARK(BM_ParseHeader)
    ->Arg(1000)
    ->Arg(10000)
    ->Arg(40000)
    ->Arg(160000)
    ->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
