// The fused attention engine (DESIGN.md section 6): queries in tiles, keys in blocks, an online
// softmax (running maximum and sum, one rescale per block, one division at the end) around
// GEMMs on views of the tiles. Every range kernel, score term, mask, window and value term of
// the reference engine is applied per tile, keys outside the causal, length or window support
// are skipped, and boosting runs as repeated passes. Memory is O(L * d) per head plus a
// per-thread workspace sized once per call; nothing is allocated inside the tile loop.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <vector>

#include "attnlens/attention/reference_engine.hpp"
#include "attnlens/attention/window.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

struct FusedTiling {
  Index query_tile = 64;  // query rows per tile (one thread's unit of work)
  Index key_block = 256;  // keys per online-softmax step
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

// Bytes of attention workspace fused_attention_heads allocates beyond its inputs and outputs:
// one FusedWorkspace per thread, plus a residual and a correction per head when boosting.
template <class T>
std::size_t fused_workspace_bytes(const FusedOptions& options, Index heads, Index queries,
                                  Index key_dim, Index value_dim, Index boost) {
  const auto per_thread = FusedWorkspace<T>::bytes(options.tiling, key_dim, value_dim);
  const std::size_t boosting =
      boost > 0 ? 2 * sizeof(T) * static_cast<std::size_t>(heads * queries * value_dim) : 0;
  return static_cast<std::size_t>(thread_count(options.parallel)) * per_thread + boosting;
}

namespace detail {

// Eigen's allFinite() is not vectorized; a NaN-propagating max of |x| is.
template <class T>
bool all_finite(ConstMatrixRef<T> x) {
  return x.size() == 0 || std::isfinite(x.cwiseAbs().template maxCoeff<Eigen::PropagateNaN>());
}

inline void check_tiling(const FusedTiling& tiling) {
  require_argument(tiling.query_tile > 0, "FusedTiling::query_tile", "> 0", tiling.query_tile);
  require_argument(tiling.key_block > 0, "FusedTiling::key_block", "> 0", tiling.key_block);
}

// One block of keys [key_begin, key_begin + cols) for the tile's queries: scores, support,
// online-softmax update of (row_max, row_sum, accumulator).
template <class T>
void fused_key_block(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                     bool values_finite, Index query_begin, Index rows, Index key_begin, Index cols,
                     FusedWorkspace<T>& ws) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const Index dv = head.values.cols();
  auto scores = ws.scores.topLeftCorner(rows, cols);
  auto probabilities = ws.probabilities.topLeftCorner(rows, cols);
  auto accumulator = ws.accumulator.topLeftCorner(rows, dv);
  const auto queries = head.queries.middleRows(query_begin, rows);
  const auto keys = head.keys.middleRows(key_begin, cols);
  const auto values = head.values.middleRows(key_begin, cols);
  const TileCoords at{head.batch, head.head, query_begin, key_begin};

  range_scores<T>(kernel.range, queries, keys, scores, ws.score_gemm);
  if (kernel.terms)
    for (const auto& term : *kernel.terms) term->add(ScoreTile<T>{at, queries, keys}, scores);
  if (kernel.mask) kernel.mask->apply(at, scores);
  apply_window<T>(kernel.window, at, scores);

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
    ws.row_sum[r] += head.denominator_key_weights
                         ? probabilities.row(r).dot(Eigen::Map<const RowVector<T>>(
                               head.denominator_key_weights + key_begin, cols))
                         : probabilities.row(r).sum();
  }
  if (head.numerator_key_weights)
    probabilities.array().rowwise() *= Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(
        head.numerator_key_weights + key_begin, cols);

  if (values_finite) {
    ws.value_gemm.add_product(T(1), probabilities, values, accumulator);
  } else {
    // A key whose value is NaN or Inf reaches exactly the queries whose support holds it.
    auto finite = ws.finite_values.topLeftCorner(cols, dv);
    for (Index c = 0; c < cols; ++c) {
      if (values.row(c).allFinite())
        finite.row(c) = values.row(c);
      else
        finite.row(c).setZero();
    }
    ws.value_gemm.add_product(T(1), probabilities, finite, accumulator);
    for (Index c = 0; c < cols; ++c) {
      if (values.row(c).allFinite()) continue;
      for (Index r = 0; r < rows; ++r)
        if (scores(r, c) != neg_inf) accumulator.row(r) += probabilities(r, c) * values.row(c);
    }
  }
  if (kernel.value_terms)
    for (const auto& term : *kernel.value_terms) term->add(at, probabilities, accumulator);
}

}  // namespace detail

// out (rows x dv) = F(values) for the queries [query_begin, query_end) of one head, where
// F(X) = A X + value terms; the tile must come from a QueryTiling of the kernel's window.
template <class T>
void fused_attention_tile(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                          bool values_finite, Index query_begin, Index query_end,
                          const FusedTiling& tiling, FusedWorkspace<T>& ws, MatrixRef<T> out) {
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
  for (Index r = 0; r < rows; ++r) {
    if (ws.row_max[r] == neg_inf) {
      out.row(r).setZero();
      continue;
    }
    T denominator = ws.row_sum[r];
    if (kernel.epsilon > T(0)) denominator += kernel.epsilon * std::exp(-ws.row_max[r]);
    out.row(r) = ws.accumulator.row(r).head(dv) / denominator;
  }
}

// Runs `count` independent heads: head_at(t) gives head t's inputs, out_at(t) its output
// (L x dv). Threads take (head, query tile) pairs; boosting adds one pass per order, each
// reading the previous pass's output of every tile of the head.
template <class T, class HeadAt, class OutAt>
void fused_attention_heads(Index count, HeadAt&& head_at, OutAt&& out_at,
                           const AttentionKernel<T>& kernel, const FusedOptions& options) {
  detail::check_tiling(options.tiling);
  if (count == 0) return;
  const HeadInputs<T> first = head_at(0);
  check_head_inputs<T>(first, kernel, out_at(0).rows(), out_at(0).cols());
  const Index L = first.queries.rows(), dv = first.values.cols();
  const QueryTiling tiles(kernel.window, L, options.tiling.query_tile);
  FusedTiling tiling = options.tiling;
  tiling.query_tile = tiles.max_rows();

  const auto threads = static_cast<std::size_t>(thread_count(options.parallel));
  std::vector<FusedWorkspace<T>> workspaces;
  workspaces.reserve(threads);
  while (workspaces.size() < threads) workspaces.emplace_back(tiling, first.queries.cols(), dv);
  std::vector<char> values_finite(static_cast<std::size_t>(count));

  // One pass: target_at(t) = F(values of pass) for every head t.
  const auto pass = [&](auto&& values_at, auto&& target_at) {
    parallel_for(
        count,
        [&](Index t) {
          values_finite[static_cast<std::size_t>(t)] = detail::all_finite(values_at(t));
        },
        options.parallel);
    parallel_for(
        count * tiles.count(),
        [&](Index task) {
          const Index t = task / tiles.count();
          const auto [begin, end] = tiles[task % tiles.count()];
          const HeadInputs<T> inputs = head_at(t);
          const HeadInputs<T> head{inputs.batch,
                                   inputs.head,
                                   inputs.queries,
                                   inputs.keys,
                                   values_at(t),
                                   inputs.numerator_key_weights,
                                   inputs.denominator_key_weights};
          fused_attention_tile<T>(head, kernel, values_finite[static_cast<std::size_t>(t)], begin,
                                  end, tiling, workspaces[static_cast<std::size_t>(thread_index())],
                                  target_at(t).middleRows(begin, end - begin));
        },
        options.parallel);
  };

  pass([&](Index t) { return head_at(t).values; }, out_at);
  if (kernel.boost == 0) return;
  std::vector<Matrix<T>> residual(static_cast<std::size_t>(count), Matrix<T>(L, dv));
  std::vector<Matrix<T>> correction(static_cast<std::size_t>(count), Matrix<T>(L, dv));
  const auto at = [](std::vector<Matrix<T>>& v, Index t) -> Matrix<T>& {
    return v[static_cast<std::size_t>(t)];
  };
  for (Index step = 0; step < kernel.boost; ++step) {
    parallel_for(
        count, [&](Index t) { at(residual, t) = head_at(t).values - out_at(t); }, options.parallel);
    pass([&](Index t) { return ConstMatrixRef<T>(at(residual, t)); },
         [&](Index t) { return MatrixRef<T>(at(correction, t)); });
    parallel_for(
        count, [&](Index t) { out_at(t) += at(correction, t); }, options.parallel);
  }
}

// One head, all of its query tiles in parallel: out (L x dv) = the boosted smoother output.
template <class T>
void fused_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel, MatrixRef<T> out,
                     const FusedOptions& options = {}) {
  fused_attention_heads<T>(
      1, [&](Index) { return head; }, [&](Index) { return out; }, kernel, options);
}

}  // namespace attnlens
