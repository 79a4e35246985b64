// The two steps every engine takes on a tile of one head (docs/architecture.md): the tile's
// scores from the kernel's factors, and the smoother's weighted sum of values with the value
// terms. The reference engine calls them once on the whole L x S problem, the fused engine on
// every (query tile, key block); only normalization and accumulation differ between them.
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

#include "attnlens/core/gemm.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_kernel.hpp"

namespace attnlens {

// Where the backward of one attention call puts its factors' parameter gradients: factors of the
// same types as the kernel's score terms and value terms, one per term (null: not wanted; an
// empty list: none wanted), and dL/dR of the sinc4 range kernel.
template <class T>
struct KernelGradients {
  std::vector<KernelFactor<T>*> terms;
  std::vector<KernelFactor<T>*> value_terms;
  T frequency = T(0);
};

// scores (queries.rows() x keys.rows()) = range(q_i, k_j) + every score term, then the support:
// masked entries and keys outside the window become -inf. `at` places the tile in its problem;
// `gemm` holds buffers for a product of the tile's size.
template <class T>
void tile_scores(const AttentionKernel<T>& kernel, const TileCoords& at, ConstMatrixRef<T> queries,
                 ConstMatrixRef<T> keys, MatrixRef<T> scores, SerialGemm<T>& gemm) {
  range_scores<T>(kernel.range, queries, keys, scores, gemm);
  if (kernel.terms)
    for (const auto& term : *kernel.terms) term->add(ScoreTile<T>{at, queries, keys}, scores);
  if (kernel.mask) kernel.mask->apply(at, scores);
  apply_window<T>(kernel.window, at, scores);
}

// The backward of tile_scores: dqueries (tile rows x d) and dkeys (tile cols x d) += the
// gradients of sum(dscores (*) scores) through the range kernel and every score term, and the
// terms' parameter gradients into `gradients`. dscores must be 0 outside the support.
template <class T>
void tile_scores_backward(const AttentionKernel<T>& kernel, const TileCoords& at,
                          ConstMatrixRef<T> queries, ConstMatrixRef<T> keys,
                          ConstMatrixRef<T> dscores, MatrixRef<T> dqueries, MatrixRef<T> dkeys,
                          KernelGradients<T>& gradients, SerialGemm<T>& gemm) {
  range_scores_backward<T>(kernel.range, queries, keys, dscores, dqueries, dkeys,
                           gradients.frequency, gemm);
  if (!kernel.terms) return;
  for (std::size_t t = 0; t < kernel.terms->size(); ++t) {
    ScoreTileGradient<T> into{dqueries, dkeys,
                              gradients.terms.empty() ? nullptr : gradients.terms[t]};
    (*kernel.terms)[t]->add_backward(ScoreTile<T>{at, queries, keys}, dscores, into);
  }
}

// out += weights * values + every value term, for a tile of weights (rows x cols, normalized or
// not) over the values of its keys. The non-finite rule (docs/limits.md): a key whose value
// holds NaN or Inf reaches exactly the rows whose support holds it, in_support(r, c), and no
// other: 0 * NaN would be NaN. values_finite says that no row of `values` needs the rule;
// finite_values is scratch of at least cols x dv for the case that some do.
template <class T, class InSupport>
void add_smoothed_values(const AttentionKernel<T>& kernel, const TileCoords& at,
                         ConstMatrixRef<T> weights, ConstMatrixRef<T> values, bool values_finite,
                         const InSupport& in_support, MatrixRef<T> finite_values,
                         SerialGemm<T>& gemm, MatrixRef<T> out) {
  if (values_finite) {
    gemm.add_product(T(1), weights, values, out);
  } else {
    auto finite = finite_values.topLeftCorner(values.rows(), values.cols());
    for (Index c = 0; c < values.rows(); ++c) {
      if (values.row(c).allFinite())
        finite.row(c) = values.row(c);
      else
        finite.row(c).setZero();
    }
    gemm.add_product(T(1), weights, finite, out);
    for (Index c = 0; c < values.rows(); ++c) {
      if (values.row(c).allFinite()) continue;
      for (Index r = 0; r < weights.rows(); ++r)
        if (in_support(r, c)) out.row(r) += weights(r, c) * values.row(c);
    }
  }
  if (kernel.value_terms)
    for (const auto& term : *kernel.value_terms) term->add(at, weights, out);
}

// The backward of the value terms of add_smoothed_values for a tile: dweights += their
// gradient for the tile's rows of dout, and their parameter gradients into `gradients`.
template <class T>
void value_terms_backward(const AttentionKernel<T>& kernel, const TileCoords& at,
                          ConstMatrixRef<T> weights, ConstMatrixRef<T> dout, MatrixRef<T> dweights,
                          KernelGradients<T>& gradients) {
  if (!kernel.value_terms) return;
  for (std::size_t t = 0; t < kernel.value_terms->size(); ++t)
    (*kernel.value_terms)[t]->add_backward(
        at, weights, dout, dweights,
        gradients.value_terms.empty() ? nullptr : gradients.value_terms[t]);
}

}  // namespace attnlens
