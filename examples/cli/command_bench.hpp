// attnlens bench: times a random MultiHeadAttention<float> self-attention block (QKV projection,
// attention, output projection) and prints one line in the format of ../shared/bench/anchors.sh,
// so attnlens and the anchors (ONNX Runtime, PyTorch) compare line by line:
//   attnlens B=1 L=512 E=512 H=8 threads=1 engine=fused ms=.. gflops=.. workspace_bytes=..
// FLOPs = B * (8 L E^2 + 4 L^2 E), the anchors' count. The time is the best of --repeat runs
// after one warm-up run. --backward times the forward pass (filling its cache) and the backward
// pass together, with 3x the forward's FLOPs (pass=forward+backward), as
// benchmarks/bench_multi_head_torch.py counts PyTorch's. peak_rss_bytes is the process's
// high-water mark of resident memory (getrusage).
//
// Memory: each forward() allocates its outputs and q, k, v (megabytes). glibc returns freed
// blocks of that size to the kernel, so every call would fault its buffers in again, page by
// page (about 4 us a page in a VM here: a third of the time at L = 2048). The command keeps
// freed memory in the process instead, as ONNX Runtime's arena allocator does; --system-malloc
// turns that off.
#pragma once

#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/core/parameters.hpp"
#include "cli/checks.hpp"
#include "cli/errors.hpp"

namespace attnlens::cli {

struct BenchArguments {
  Index batch = 1, length = 512, embed = 512, heads = 8;
  std::string engine = "fused";
  int threads = 0;  // 0: OMP_NUM_THREADS or the core count
  int repeat = 7;
  Index query_tile = FusedTiling{}.query_tile, key_block = FusedTiling{}.key_block;
  bool system_malloc = false;
  bool backward = false;
};

namespace detail_bench {

// The block's memory in bytes, as an estimate in double (no overflow): x, q, k, v, the heads'
// output and the result (B L E floats each), the weights (4 E^2), and for the reference engine
// the B H L^2 weights it materializes.
inline double bench_bytes(const BenchArguments& args) {
  const double B = static_cast<double>(args.batch), L = static_cast<double>(args.length),
               E = static_cast<double>(args.embed), H = static_cast<double>(args.heads);
  const double maps = args.engine == "reference" ? B * H * L * L : 0.0;
  // The backward pass: the cache (inputs, projections, context) and the gradients.
  const double backward = args.backward ? 16 * B * L * E + 8 * E * E : 0.0;
  return sizeof(float) * (6 * B * L * E + 4 * E * E + maps + backward);
}

inline void run(const BenchArguments& args) {
  require_memory(bench_bytes(args),
                 detail::concat("--batch ", args.batch, " --len ", args.length, " --embed ",
                                args.embed, " --engine ", args.engine));
#if defined(__GLIBC__)
  if (!args.system_malloc) {
    mallopt(M_MMAP_MAX, 0);              // large blocks from the heap, not fresh mappings
    mallopt(M_TRIM_THRESHOLD, 1 << 30);  // and the heap not shrunk after each call
  }
#endif
  Rng rng(0);
  const MultiHeadAttention<float> mha(MultiHeadAttentionOptions{args.embed, args.heads}, rng);
  Tensor<float> x({args.batch, args.length, args.embed});
  for (float& v : x.storage()) v = rng.normal<float>();

  MultiHeadForwardOptions options;
  options.engine = args.engine == "fused" ? AttentionEngine::fused : AttentionEngine::reference;
  options.tiling = {args.query_tile, args.key_block};
  options.parallel.threads = args.threads;
  const int threads = thread_count(options.parallel);

  MultiHeadAttention<float> gradient = zeros_like(mha);
  Tensor<float> doutput(x.shape());
  for (float& v : doutput.storage()) v = rng.normal<float>();
  MultiHeadBackwardOptions backward;
  backward.parallel = options.parallel;
  double best = 1e300;
  for (int run = 0; run <= args.repeat; ++run) {  // run 0 warms caches and page tables
    const auto start = std::chrono::steady_clock::now();
    if (args.backward) {
      MultiHeadCache<float> cache;
      mha.forward(x, {}, options, &cache);
      mha.backward(cache, doutput, gradient, backward);
    } else {
      mha.forward(x, {}, options);
    }
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    if (run > 0) best = std::min(best, seconds.count());
  }
  const double B = static_cast<double>(args.batch), L = static_cast<double>(args.length),
               E = static_cast<double>(args.embed);
  const double flops = (args.backward ? 3 : 1) * B * (8 * L * E * E + 4 * L * L * E);
  const std::size_t workspace =
      options.engine == AttentionEngine::fused
          ? fused_workspace_bytes<float>({options.tiling, options.parallel},
                                         args.batch * args.heads, args.length, mha.head_dim(),
                                         mha.head_dim(), 0)
          : sizeof(float) * static_cast<std::size_t>(args.batch * args.heads) *
                static_cast<std::size_t>(args.length * args.length);
  struct rusage usage {};
  getrusage(RUSAGE_SELF, &usage);
  std::printf(
      "attnlens B=%ld L=%ld E=%ld H=%ld threads=%d engine=%s%s ms=%.2f gflops=%.1f "
      "workspace_bytes=%zu peak_rss_bytes=%ld\n",
      static_cast<long>(args.batch), static_cast<long>(args.length), static_cast<long>(args.embed),
      static_cast<long>(args.heads), threads, args.engine.c_str(),
      args.backward ? " pass=forward+backward" : "", best * 1e3, flops / best * 1e-9, workspace,
      static_cast<long>(usage.ru_maxrss) * 1024);
}

}  // namespace detail_bench

inline void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArguments>();
  CLI::App* cmd = app.add_subcommand(
      "bench",
      "Time a random multi-head self-attention block (float32) and print one line in the "
      "format of ../shared/bench/anchors.sh: B, L, E, H, threads, ms (best of --repeat), "
      "GFLOP/s with FLOPs = B*(8*L*E^2 + 4*L^2*E), and the attention workspace in bytes");
  cmd->add_option("--batch", args->batch, "Sequences B")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--len", args->length, "Tokens per sequence L")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--embed", args->embed, "Embedding size E")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--heads", args->heads, "Heads H (a divisor of E)")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--engine", args->engine,
                  "fused (tiled online softmax, O(L d) memory) or reference (materializes the "
                  "L x L weights of every head)")
      ->check(CLI::IsMember({"fused", "reference"}))
      ->capture_default_str();
  cmd->add_option("--threads", args->threads, "Threads; 0 = OMP_NUM_THREADS or all cores")
      ->check(k_non_negative_number)
      ->capture_default_str();
  cmd->add_option("--repeat", args->repeat, "Timed runs; the best is printed")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--query-tile", args->query_tile,
                  "Fused engine: query rows per tile (at most L are used)")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_option("--key-block", args->key_block,
                  "Fused engine: keys per online-softmax step (at most L are used)")
      ->check(k_positive_number)
      ->capture_default_str();
  cmd->add_flag("--backward", args->backward,
                "Time forward (filling the cache) + backward, with 3x the forward's FLOPs");
  cmd->add_flag("--system-malloc", args->system_malloc,
                "Leave glibc's malloc at its defaults (freed megabyte blocks go back to the "
                "kernel and are faulted in again on the next call)");
  cmd->callback([args] { run_reporting_errors("bench", [&] { detail_bench::run(*args); }); });
}

}  // namespace attnlens::cli
