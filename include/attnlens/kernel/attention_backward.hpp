// The backward pass of attention (docs/math.md section 6, docs/gradients.md): one engine for the
// reference and the fused forward. From each row's saved log-sum-exp it recomputes the kernel
// tile by tile (FlashAttention-2: never an L x S matrix beyond one tile), forms dA from the
// upstream gradient and the boosting iterates, turns it into the score gradient dS with the
// normalization's backward, and hands the same dS tile to every factor: the range kernel and
// the score terms (kernel/tile.hpp), the value terms, the per-key weights. The reference engine
// runs it with one tile per head.
#pragma once

#include <algorithm>
#include <cstddef>
#include <limits>
#include <memory>
#include <utility>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_kernel.hpp"
#include "attnlens/kernel/factor.hpp"
#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/kernel/tile.hpp"
#include "attnlens/kernel/window.hpp"

namespace attnlens {

// What the backward pass of one head reads from its forward pass and the upstream gradient,
// and where it writes the head's gradients (every output is overwritten).
template <class T>
struct HeadBackward {
  const T* row_logsumexp;    // L entries: the forward's log-denominators (fused_attention_tile)
  ConstMatrixRef<T> output;  // L x dv: the smoother's output z_k
  // z_0 .. z_{k-1} for boosting of order k (L x dv each); empty for k = 0.
  std::vector<ConstMatrixRef<T>> iterates;
  ConstMatrixRef<T> doutput;  // L x dv: dL/dz_k
  MatrixRef<T> dqueries;      // L x d: dL/dq (the queries of HeadInputs)
  MatrixRef<T> dkeys;         // S x d
  MatrixRef<T> dvalues;       // S x dv
  // S entries each, or null: dL/dw and dL/du of the head's key weights.
  T* dnumerator_weights = nullptr;
  T* ddenominator_weights = nullptr;
  // L x S row-major, or null: dL/dA for A as the head's output saw it (after the intervention
  // scale), what attribution reads.
  T* dprobabilities = nullptr;
};

namespace detail {

// One thread's scratch for the backward tiles, and its own copies of the factors' gradients
// (summed into the caller's at the end, so that threads never write one parameter together).
template <class T>
struct BackwardWorkspace {
  Matrix<T> scores, probabilities, weights, dweights;  // query_tile x key_block each
  SerialGemm<T> gemm;
  std::vector<std::shared_ptr<KernelFactor<T>>> term_gradients, value_term_gradients;
  KernelGradients<T> gradients;

  BackwardWorkspace(const FusedTiling& tiling, Index key_dim, Index depth,
                    const KernelGradients<T>& into)
      : scores(tiling.query_tile, tiling.key_block),
        probabilities(tiling.query_tile, tiling.key_block),
        weights(tiling.query_tile, tiling.key_block),
        dweights(tiling.query_tile, tiling.key_block),
        gemm(std::max(tiling.query_tile, tiling.key_block),
             std::max({tiling.query_tile, tiling.key_block, key_dim, depth}),
             std::max({tiling.query_tile, tiling.key_block, key_dim, depth})) {
    const auto copies = [](const std::vector<KernelFactor<T>*>& targets,
                           std::vector<std::shared_ptr<KernelFactor<T>>>& own,
                           std::vector<KernelFactor<T>*>& pointers) {
      for (KernelFactor<T>* target : targets) {
        own.push_back(target ? zeroed_copy(*target) : nullptr);
        pointers.push_back(own.back().get());
      }
    };
    copies(into.terms, term_gradients, gradients.terms);
    copies(into.value_terms, value_term_gradients, gradients.value_terms);
  }

  // into += this thread's parameter gradients.
  void add_to(KernelGradients<T>& into) const {
    for (std::size_t t = 0; t < term_gradients.size(); ++t)
      if (term_gradients[t]) add_factor_parameters(*into.terms[t], *term_gradients[t]);
    for (std::size_t t = 0; t < value_term_gradients.size(); ++t)
      if (value_term_gradients[t])
        add_factor_parameters(*into.value_terms[t], *value_term_gradients[t]);
    into.frequency += gradients.frequency;
  }
};

// A tile's A recomputed from the forward's log-sum-exps: scores (tile_scores), p = exp(scores -
// lse) (0 outside the support and on rows without one), and A = scale w p, returned: p itself
// when there are no key weights and no intervention (no copy of the tile), else ws.weights.
template <class T>
ConstMatrixRef<T> recompute_probabilities(const HeadInputs<T>& head,
                                          const AttentionKernel<T>& kernel, const T* row_logsumexp,
                                          const TileCoords& at, Index rows, Index cols,
                                          BackwardWorkspace<T>& ws) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  auto scores = ws.scores.topLeftCorner(rows, cols);
  auto p = ws.probabilities.topLeftCorner(rows, cols);
  tile_scores<T>(kernel, at, head.queries.middleRows(at.query_begin, rows),
                 head.keys.middleRows(at.key_begin, cols), scores, ws.gemm);
  for (Index r = 0; r < rows; ++r) {
    const T lse = row_logsumexp[at.query_begin + r];
    if (lse == neg_inf)
      p.row(r).setZero();
    else
      exp_shifted(scores.row(r), lse, p.row(r));
  }
  if (!head.numerator_key_weights && head.scale == T(1)) return p;
  auto weights = ws.weights.topLeftCorner(rows, cols);
  weights = p;
  head_normalization(head, kernel).weigh(weights, at.key_begin);
  return weights;
}

// The (query tile, key block) pairs of one head's key chunk [chunk_begin, chunk_end) inside
// the support, as the forward visits them: visit(query_begin, rows, key_begin, cols).
template <class Visit>
void for_each_backward_tile(const QueryTiling& tiles, const LocalWindow& window, Index key_block,
                            Index chunk_begin, Index chunk_end, const std::vector<Index>& key_ends,
                            Visit&& visit) {
  for (Index tile = 0; tile < tiles.count(); ++tile) {
    // Not a structured binding: clang 14 cannot capture one in the lambda below.
    const std::pair<Index, Index> rows = tiles[tile];
    const Index begin = rows.first, end = rows.second;
    for_each_key_range(window, begin, end, key_ends[static_cast<std::size_t>(tile)],
                       [&](Index j0, Index j1) {
                         j0 = std::max(j0, chunk_begin);
                         j1 = std::min(j1, chunk_end);
                         for (Index block = j0; block < j1; block += key_block)
                           visit(begin, end - begin, block, std::min(key_block, j1 - block));
                       });
  }
}

}  // namespace detail

// The backward pass of `count` heads of one kernel: head_at(t) gives head t's inputs as the
// forward saw them (HeadInputs), backward_at(t) its HeadBackward. `gradients` receives the
// factors' parameter gradients (accumulated). Threads take (head, key chunk) pairs, each
// owning its keys' rows of dK, dV and the key weights' gradients; with more threads than heads
// a head's keys are split, and each chunk sums its own dQ, added up at the end. Rows without
// support get zero gradients.
template <class T, class HeadAt, class BackwardAt>
void attention_heads_backward(Index count, HeadAt&& head_at, BackwardAt&& backward_at,
                              const AttentionKernel<T>& kernel, const FusedOptions& options,
                              KernelGradients<T>& gradients) {
  detail::check_tiling(options.tiling);
  if (count == 0) return;
  const HeadInputs<T> first = head_at(0);
  const Index L = first.queries.rows(), S = first.keys.rows(), d = first.queries.cols();
  const Index dv = first.values.cols(), k = kernel.boost;
  check_head_inputs<T>(first, kernel, L, dv);
  FusedTiling tiling = detail::fitted_tiling(options.tiling, L, S);
  const QueryTiling tiles(kernel.window, L, tiling.query_tile);
  tiling.query_tile = tiles.max_rows();

  // Key chunks: enough (head, chunk) tasks for every thread, whole key blocks each.
  const Index blocks = (S + tiling.key_block - 1) / tiling.key_block;
  const Index chunks = std::clamp<Index>(
      (static_cast<Index>(thread_count(options.parallel)) + count - 1) / count, 1, blocks);
  const Index chunk_keys = (blocks + chunks - 1) / chunks * tiling.key_block;
  const Index depth = (k + 1) * dv;  // of dA = G R^T
  PerThread<detail::BackwardWorkspace<T>> workspaces(options.parallel);
  const auto workspace = [&]() -> detail::BackwardWorkspace<T>& {
    return workspaces.get(tiling, d, std::max(depth, dv), gradients);
  };
  // Each query tile's key end (the mask's key lengths), per head's sequence.
  const auto key_ends = [&](const HeadInputs<T>& head) {
    std::vector<Index> ends(static_cast<std::size_t>(tiles.count()));
    for (Index tile = 0; tile < tiles.count(); ++tile)
      ends[static_cast<std::size_t>(tile)] =
          kernel.mask ? kernel.mask->key_end(head.batch, tiles[tile].second) : S;
    return ends;
  };

  // Boosting: g_k = dL/dz_k, and back through z_{m+1} = z_m + F(V - z_m): the residual's
  // gradient A^T g_{m+1} goes to dV and is taken from g_m = g_{m+1} - A^T g_{m+1}. The
  // gradients g_0 .. g_k of every head are kept: dA = sum_n g_n R_n^T needs them all.
  std::vector<Matrix<T>> g(static_cast<std::size_t>(count * (k + 1)));
  const auto g_at = [&](Index t, Index n) -> Matrix<T>& {
    return g[static_cast<std::size_t>(t * (k + 1) + n)];
  };
  // transposed[t] = A^T input_t, S x dv per head, over every (head, chunk) task.
  const auto transposed_pass = [&](auto&& input_at, std::vector<Matrix<T>>& transposed) {
    parallel_for(
        count * chunks,
        [&](Index task) {
          const Index t = task / chunks, chunk = task % chunks;
          const HeadInputs<T> head = head_at(t);
          HeadBackward<T> data = backward_at(t);
          const Index c0 = chunk * chunk_keys, c1 = std::min(S, c0 + chunk_keys);
          auto out =
              transposed[static_cast<std::size_t>(t)].middleRows(c0, std::max<Index>(c1 - c0, 0));
          out.setZero();
          detail::BackwardWorkspace<T>& ws = workspace();
          detail::for_each_backward_tile(
              tiles, kernel.window, tiling.key_block, c0, c1, key_ends(head),
              [&](Index q0, Index rows, Index j0, Index cols) {
                const ConstMatrixRef<T> weights = detail::recompute_probabilities<T>(
                    head, kernel, data.row_logsumexp, {head.batch, head.head, q0, j0}, rows, cols,
                    ws);
                ws.gemm.add_transposed_product(T(1), weights, input_at(t).middleRows(q0, rows),
                                               out.middleRows(j0 - c0, cols));
              });
        },
        options.parallel);
  };
  for (Index t = 0; t < count; ++t) {
    HeadBackward<T> data = backward_at(t);
    if (k > 0) g_at(t, k) = data.doutput;
    data.dvalues.setZero();
  }
  if (k > 0) {
    std::vector<Matrix<T>> transposed(static_cast<std::size_t>(count), Matrix<T>(S, dv));
    for (Index n = k; n > 0; --n) {
      transposed_pass([&](Index t) -> const Matrix<T>& { return g_at(t, n); }, transposed);
      for (Index t = 0; t < count; ++t) {
        const Matrix<T>& residual_gradient = transposed[static_cast<std::size_t>(t)];
        backward_at(t).dvalues += residual_gradient;
        g_at(t, n - 1) = g_at(t, n) - residual_gradient;
      }
    }
  }

  // Per head: G = [g_0 .. g_k], R = [V, V - z_0, .., V - z_{k-1}] (so dA = G R^T plus the value
  // terms' part), the sum of the g_n (what the value terms see) and D_i = sum_j dA_ij A_ij =
  // sum_n g_n,i . (z_n - z_{n-1})_i (z_{-1} = 0), from the forward's iterates. Without boosting
  // G is dO, R is V and the sum is dO: views, no copies.
  struct Prepared {
    Matrix<T> g_all, r_all, g_sum;  // with boosting only
    Vector<T> row_dot;
    bool values_finite = true;
  };
  std::vector<Prepared> prepared(static_cast<std::size_t>(count));
  parallel_for(
      count,
      [&](Index t) {
        const HeadInputs<T> head = head_at(t);
        HeadBackward<T> data = backward_at(t);
        Prepared& p = prepared[static_cast<std::size_t>(t)];
        p.values_finite = detail::all_finite<T>(head.values);
        if (k == 0) {
          p.row_dot = data.doutput.cwiseProduct(data.output).rowwise().sum();
          return;
        }
        p.g_all.resize(L, depth);
        p.r_all.resize(S, depth);
        p.row_dot = Vector<T>::Zero(L);
        const auto z = [&](Index m) {
          return m == k ? data.output : data.iterates[static_cast<std::size_t>(m)];
        };
        for (Index n = 0; n <= k; ++n) {
          p.g_all.middleCols(n * dv, dv) = g_at(t, n);
          if (n == 0) {
            p.r_all.leftCols(dv) = head.values;
            p.row_dot += g_at(t, 0).cwiseProduct(z(0)).rowwise().sum();
          } else {
            p.r_all.middleCols(n * dv, dv) = head.values - z(n - 1);
            p.row_dot += g_at(t, n).cwiseProduct(z(n) - z(n - 1)).rowwise().sum();
          }
        }
        p.g_sum = p.g_all.leftCols(dv);
        for (Index n = 1; n <= k; ++n) p.g_sum += p.g_all.middleCols(n * dv, dv);
      },
      options.parallel);

  // The score pass: every tile's dA, then dS, handed to the factors.
  std::vector<Matrix<T>> chunk_dqueries(static_cast<std::size_t>(chunks > 1 ? count * chunks : 0));
  parallel_for(
      count * chunks,
      [&](Index task) {
        constexpr T neg_inf = -std::numeric_limits<T>::infinity();
        const Index t = task / chunks, chunk = task % chunks;
        const HeadInputs<T> head = head_at(t);
        HeadBackward<T> data = backward_at(t);
        const Prepared& p = prepared[static_cast<std::size_t>(t)];
        const ConstMatrixRef<T> g_all = k == 0 ? data.doutput : ConstMatrixRef<T>(p.g_all);
        const ConstMatrixRef<T> r_all = k == 0 ? head.values : ConstMatrixRef<T>(p.r_all);
        const ConstMatrixRef<T> g_sum = k == 0 ? data.doutput : ConstMatrixRef<T>(p.g_sum);
        const Index c0 = chunk * chunk_keys, c1 = std::min(S, c0 + chunk_keys);
        const detail::KernelNormalization<T> normalization =
            detail::head_normalization(head, kernel);
        MatrixRef<T> dqueries = chunks > 1
                                    ? MatrixRef<T>(chunk_dqueries[static_cast<std::size_t>(task)] =
                                                       Matrix<T>::Zero(L, d))
                                    : data.dqueries;
        if (chunks == 1) dqueries.setZero();
        if (c1 > c0) {
          data.dkeys.middleRows(c0, c1 - c0).setZero();
          for (T* w : {data.dnumerator_weights, data.ddenominator_weights})
            if (w) std::fill(w + c0, w + c1, T(0));
        }
        detail::BackwardWorkspace<T>& ws = workspace();
        detail::for_each_backward_tile(
            tiles, kernel.window, tiling.key_block, c0, c1, key_ends(head),
            [&](Index q0, Index rows, Index j0, Index cols) {
              const TileCoords at{head.batch, head.head, q0, j0};
              const ConstMatrixRef<T> weights = detail::recompute_probabilities<T>(
                  head, kernel, data.row_logsumexp, at, rows, cols, ws);
              const auto scores = ws.scores.topLeftCorner(rows, cols);
              const auto probabilities = ws.probabilities.topLeftCorner(rows, cols);
              auto dweights = ws.dweights.topLeftCorner(rows, cols);
              // dV += A^T g_0 (the last of the transposed products).
              ws.gemm.add_transposed_product(T(1), weights, g_all.block(q0, 0, rows, dv),
                                             data.dvalues.middleRows(j0, cols));
              dweights.setZero();
              ws.gemm.add_product_transposed(T(1), g_all.middleRows(q0, rows),
                                             r_all.middleRows(j0, cols), dweights);
              value_terms_backward<T>(kernel, at, weights, g_sum.middleRows(q0, rows), dweights,
                                      ws.gradients);
              // A key with a non-finite value outside a row's support gives dA = NaN there,
              // which the zero of p would not cancel.
              if (!p.values_finite) dweights = (scores.array() == neg_inf).select(T(0), dweights);
              if (data.dprobabilities)
                MatrixMap<T>(data.dprobabilities, L, S).block(q0, j0, rows, cols) = dweights;
              normalization.weights_gradient(probabilities, dweights, p.row_dot.data() + q0, j0,
                                             data.dnumerator_weights, data.ddenominator_weights);
              normalization.scores_gradient(probabilities, p.row_dot.data() + q0, j0, dweights);
              tile_scores_backward<T>(kernel, at, head.queries.middleRows(q0, rows),
                                      head.keys.middleRows(j0, cols), dweights,
                                      dqueries.middleRows(q0, rows),
                                      data.dkeys.middleRows(j0, cols), ws.gradients, ws.gemm);
            });
      },
      options.parallel);
  if (chunks > 1)
    for (Index t = 0; t < count; ++t) {
      MatrixRef<T> dqueries = backward_at(t).dqueries;
      dqueries = chunk_dqueries[static_cast<std::size_t>(t * chunks)];
      for (Index chunk = 1; chunk < chunks; ++chunk)
        dqueries += chunk_dqueries[static_cast<std::size_t>(t * chunks + chunk)];
    }
  workspaces.for_each([&](detail::BackwardWorkspace<T>& ws) { ws.add_to(gradients); });
}

}  // namespace attnlens
