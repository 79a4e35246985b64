// The fused attention engine (docs/performance.md): queries in tiles, keys in blocks, an online
// softmax (running maximum and sum, one rescale per block, one division at the end) around
// GEMMs on views of the tiles. Each block's scores and weighted values come from the steps of
// kernel/tile.hpp, the same the reference engine takes, so every factor of the kernel is served;
// keys outside the causal, length or window support are skipped, and boosting runs as repeated
// passes (kernel/boosting.hpp). Memory is O(L * d) per head plus a per-thread workspace sized
// once per call; nothing is allocated inside the tile loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <type_traits>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_kernel.hpp"
#include "attnlens/kernel/boosting.hpp"
#include "attnlens/kernel/detail/softmax_tile_avx512.hpp"
#include "attnlens/kernel/tile.hpp"
#include "attnlens/kernel/window.hpp"

namespace attnlens {

struct FusedTiling {
  Index query_tile = 128;  // query rows per tile (one thread's unit of work)
  Index key_block = 256;   // keys per online-softmax step
};

struct FusedOptions {
  FusedTiling tiling;
  ParallelOptions parallel;
};

// The scratch one thread needs for one tile: sized once, reused for every tile and block.
template <class T>
struct FusedWorkspace {
  Matrix<T> scores;         // query_tile x key_block
  Matrix<T> probabilities;  // query_tile x key_block, exp(score - running max)
  Matrix<T> finite_values;  // key_block x dv, only when some values are NaN or Inf
  Matrix<T> accumulator;    // query_tile x dv, unnormalized output
  Vector<T> row_max;
  Vector<T> row_sum;
  SerialGemm<T> score_gemm;  // q k^T: query_tile x key_block, depth d
  SerialGemm<T> value_gemm;  // P V: query_tile x dv, depth key_block

  FusedWorkspace(const FusedTiling& tiling, Index key_dim, Index value_dim)
      : scores(tiling.query_tile, tiling.key_block),
        probabilities(tiling.query_tile, tiling.key_block),
        finite_values(tiling.key_block, value_dim),
        accumulator(tiling.query_tile, value_dim),
        row_max(tiling.query_tile),
        row_sum(tiling.query_tile),
        score_gemm(tiling.query_tile, tiling.key_block, key_dim),
        value_gemm(tiling.query_tile, value_dim, tiling.key_block) {}

  // The matrices and vectors; Eigen's packing buffers add about one tile more.
  static std::size_t bytes(const FusedTiling& tiling, Index key_dim, Index value_dim) {
    const auto q = static_cast<std::size_t>(tiling.query_tile);
    const auto k = static_cast<std::size_t>(tiling.key_block);
    const auto d = static_cast<std::size_t>(key_dim);
    const auto dv = static_cast<std::size_t>(value_dim);
    const std::size_t packing = (q + k) * d + (q + dv) * k;
    return sizeof(T) * (2 * q * k + k * dv + q * dv + 2 * q + packing);
  }
};

namespace detail {

// Eigen's allFinite() is not vectorized; a NaN-propagating max of |x| is.
template <class T>
bool all_finite(ConstMatrixRef<T> x) {
#if ATTNLENS_HAS_AVX512_KERNELS
  if constexpr (std::is_same_v<T, float>)
    if (use_avx512()) return all_finite_avx512(x.data(), x.rows(), x.cols(), x.outerStride());
#endif
  return x.size() == 0 || std::isfinite(x.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>());
}

// Whether the kernel is softmax(scale q.k) alone: no score or value terms, mask, window, key
// weights or epsilon (an intervention's scale is per head: the caller checks it).
template <class T>
bool is_plain_softmax(const AttentionKernel<T>& kernel, const HeadInputs<T>& head) {
  return kernel.range.type == RangeKernelType::dot_product &&
         (!kernel.terms || kernel.terms->empty()) && !kernel.mask && !kernel.window.active() &&
         (!kernel.value_terms || kernel.value_terms->empty()) && kernel.epsilon == T(0) &&
         !head.numerator_key_weights && !head.denominator_key_weights;
}

inline void check_tiling(const FusedTiling& tiling) {
  require_argument(tiling.query_tile > 0, "FusedTiling::query_tile", "> 0", tiling.query_tile);
  require_argument(tiling.key_block > 0, "FusedTiling::key_block", "> 0", tiling.key_block);
}

// The tiling a problem of `queries` x `keys` runs with: tiles no larger than the problem, so
// that an oversized option costs neither memory nor an index overflow, and the same tiles.
inline FusedTiling fitted_tiling(const FusedTiling& tiling, Index queries, Index keys) {
  check_tiling(tiling);
  return {std::min(tiling.query_tile, std::max<Index>(queries, 1)),
          std::min(tiling.key_block, std::max<Index>(keys, 1))};
}

// One block of keys [key_begin, key_begin + cols) for the tile's queries: the block's scores,
// the online-softmax update of (row_max, row_sum, accumulator) and its weighted values.
template <class T>
void fused_key_block(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                     bool values_finite, Index query_begin, Index rows, Index key_begin, Index cols,
                     FusedWorkspace<T>& ws) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index dv = head.values.cols();
  auto scores = ws.scores.topLeftCorner(rows, cols);
  auto probabilities = ws.probabilities.topLeftCorner(rows, cols);
  auto accumulator = ws.accumulator.topLeftCorner(rows, dv);
  const TileCoords at{head.batch, head.head, query_begin, key_begin};
  const KernelNormalization<T> normalization = head_normalization(head, kernel);

  tile_scores<T>(kernel, at, head.queries.middleRows(query_begin, rows),
                 head.keys.middleRows(key_begin, cols), scores, ws.score_gemm);
  for (Index r = 0; r < rows; ++r) {
    const T block_max = scores.row(r).maxCoeff();
    if (block_max == neg_inf) {
      probabilities.row(r).setZero();
      continue;
    }
    T& running_max = ws.row_max[r];
    if (block_max > running_max) {  // rescale what was summed so far, once per block
      const T factor = running_max == neg_inf ? T(0) : std::exp(running_max - block_max);
      accumulator.row(r) *= factor;
      ws.row_sum[r] *= factor;
      running_max = block_max;
    }
    detail::exp_shifted(scores.row(r), running_max, probabilities.row(r));
    ws.row_sum[r] += normalization.weighted_sum(probabilities.row(r), key_begin);
  }
  normalization.weigh(probabilities, key_begin);
  add_smoothed_values<T>(
      kernel, at, probabilities, head.values.middleRows(key_begin, cols), values_finite,
      [&](Index r, Index c) { return scores(r, c) != neg_inf; }, ws.finite_values, ws.value_gemm,
      accumulator);
}

}  // namespace detail

// Bytes of attention workspace fused_attention_heads allocates at most beyond its inputs and
// outputs: per thread one FusedWorkspace (and for float on AVX-512 one softmax tile workspace),
// plus a residual and a correction per head when boosting.
template <class T>
std::size_t fused_workspace_bytes(const FusedOptions& options, Index heads, Index queries,
                                  Index key_dim, Index value_dim, Index boost) {
  const FusedTiling tiling = detail::fitted_tiling(options.tiling, queries, queries);
  std::size_t per_thread = FusedWorkspace<T>::bytes(tiling, key_dim, value_dim);
#if ATTNLENS_HAS_AVX512_KERNELS
  if (std::is_same_v<T, float> && detail::use_avx512())
    per_thread += detail::avx512::SoftmaxTileWorkspace::bytes(tiling.query_tile, tiling.key_block,
                                                              key_dim, value_dim);
#endif
  const std::size_t boosting =
      boost > 0 ? 2 * sizeof(T) * static_cast<std::size_t>(heads * queries * value_dim) : 0;
  return static_cast<std::size_t>(thread_count(options.parallel)) * per_thread + boosting;
}

// out (rows x dv) = F(values) for the queries [query_begin, query_end) of one head, where
// F(X) = A X + value terms; the tile must come from a QueryTiling of the kernel's window. With
// row_logsumexp set, it receives the log of each row's denominator, log(sum_j u_j exp(score_ij)
// + epsilon) (-inf for a row without support): a backward pass recomputes A_ij = w_j
// exp(score_ij - row_logsumexp_i) from it.
template <class T>
void fused_attention_tile(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                          bool values_finite, Index query_begin, Index query_end,
                          const FusedTiling& tiling, FusedWorkspace<T>& ws, MatrixRef<T> out,
                          T* row_logsumexp = nullptr) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index rows = query_end - query_begin, dv = head.values.cols();
  ws.accumulator.topLeftCorner(rows, dv).setZero();
  ws.row_max.head(rows).setConstant(neg_inf);
  ws.row_sum.head(rows).setZero();
  const Index key_end =
      kernel.mask ? kernel.mask->key_end(head.batch, query_end) : head.keys.rows();
  for_each_key_range(kernel.window, query_begin, query_end, key_end, [&](Index j0, Index j1) {
    for (Index block = j0; block < j1; block += tiling.key_block)
      detail::fused_key_block<T>(head, kernel, values_finite, query_begin, rows, block,
                                 std::min(tiling.key_block, j1 - block), ws);
  });
  const detail::KernelNormalization<T> normalization = detail::head_normalization(head, kernel);
  for (Index r = 0; r < rows; ++r) {
    const T row_max = ws.row_max[r];
    if (row_max == neg_inf) {
      if (row_logsumexp) row_logsumexp[r] = neg_inf;
      out.row(r).setZero();
      continue;
    }
    const T denominator = normalization.denominator(ws.row_sum[r], row_max);
    if (row_logsumexp) row_logsumexp[r] = row_max + std::log(denominator);
    out.row(r) = ws.accumulator.row(r).head(dv) / denominator;
  }
}

// Runs `count` independent heads: head_at(t) gives head t's inputs, out_at(t) its output
// (L x dv), and logsumexp_at(t) null or L entries for each row's log-sum-exp (see
// fused_attention_tile; from the first pass when boosting, whose passes share A). Threads take
// (head, query tile) pairs: one at a time, or for the softmax tiles, whose costs are equal, in
// contiguous blocks (Schedule::contiguous). record(m, t, z_m) sees the boosting iterates as
// boosted_smoothing's does.
template <class T, class HeadAt, class OutAt, class LogSumExpAt, class Record = NoIterates>
void fused_attention_heads(Index count, HeadAt&& head_at, OutAt&& out_at,
                           LogSumExpAt&& logsumexp_at, const AttentionKernel<T>& kernel,
                           const FusedOptions& options, Record&& record = {}) {
  detail::check_tiling(options.tiling);
  if (count == 0) return;
  const HeadInputs<T> first = head_at(0);
  check_head_inputs<T>(first, kernel, out_at(0).rows(), out_at(0).cols());
  const Index L = first.queries.rows(), dv = first.values.cols();
  FusedTiling tiling = detail::fitted_tiling(options.tiling, L, first.keys.rows());
  const QueryTiling tiles(kernel.window, L, tiling.query_tile);
  tiling.query_tile = tiles.max_rows();

  PerThread<FusedWorkspace<T>> workspaces(options.parallel);
  std::vector<char> values_finite(static_cast<std::size_t>(count));

  // The plain-softmax plan (scale q.k, no terms, mask, window, weights or epsilon) runs on the
  // AVX-512 tile step where the tile's inputs are finite; the portable step handles Inf and NaN
  // exactly as the reference engine does. Both write the log-sum-exps when they are asked for.
  bool softmax_kernel = false;
#if ATTNLENS_HAS_AVX512_KERNELS
  PerThread<detail::avx512::SoftmaxTileWorkspace> softmax_workspaces(options.parallel);
  if constexpr (std::is_same_v<T, float>)
    softmax_kernel = detail::use_avx512() && detail::is_plain_softmax(kernel, first);
#endif

  bool first_pass = true;
  // One pass: target_at(t) = F(input_at(t)) for every head t. The portable step is told
  // whether a head's values are finite; the softmax tiles check their inputs themselves.
  const auto pass = [&](auto&& input_at, auto&& target_at) {
    if (!softmax_kernel)
      parallel_for(
          count,
          [&](Index t) {
            values_finite[static_cast<std::size_t>(t)] = detail::all_finite(input_at(t));
          },
          options.parallel);
    parallel_for(
        count * tiles.count(),
        [&](Index task) {
          const Index t = task / tiles.count();
          const auto [begin, end] = tiles[task % tiles.count()];
          const HeadInputs<T> head = with_values(head_at(t), input_at(t));
          MatrixRef<T> target = target_at(t).middleRows(begin, end - begin);
#if ATTNLENS_HAS_AVX512_KERNELS
          if constexpr (std::is_same_v<T, float>) {
            T* const tile_logsumexp =
                first_pass && logsumexp_at(t) ? logsumexp_at(t) + begin : nullptr;
            if (softmax_kernel && head.scale == T(1) &&
                detail::avx512::softmax_tile(
                    {head.queries, head.keys, head.values, kernel.range.scale, begin, end - begin,
                     head.keys.rows(), tile_logsumexp},
                    softmax_workspaces.get(tiling.query_tile, tiling.key_block,
                                           first.queries.cols(), dv),
                    target))
              return;
          }
#endif
          const bool finite_values = softmax_kernel ? detail::all_finite(head.values)
                                                    : values_finite[static_cast<std::size_t>(t)];
          T* const logsumexp = first_pass ? logsumexp_at(t) : nullptr;
          fused_attention_tile<T>(head, kernel, finite_values, begin, end, tiling,
                                  workspaces.get(tiling, first.queries.cols(), dv), target,
                                  logsumexp ? logsumexp + begin : nullptr);
        },
        options.parallel, softmax_kernel ? Schedule::contiguous : Schedule::dynamic);
    first_pass = false;
  };
  boosted_smoothing<T>(
      count, kernel.boost, [&](Index t) { return head_at(t).values; }, out_at, pass,
      options.parallel, record);
}

// As above, without the log-sum-exps.
template <class T, class HeadAt, class OutAt>
void fused_attention_heads(Index count, HeadAt&& head_at, OutAt&& out_at,
                           const AttentionKernel<T>& kernel, const FusedOptions& options) {
  fused_attention_heads<T>(
      count, head_at, out_at, [](Index) -> T* { return nullptr; }, kernel, options);
}

// One head, all of its query tiles in parallel: out (L x dv) = the boosted smoother output.
template <class T>
void fused_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel, MatrixRef<T> out,
                     const FusedOptions& options = {}) {
  fused_attention_heads<T>(
      1, [&](Index) { return head; }, [&](Index) { return out; }, kernel, options);
}

}  // namespace attnlens
