// The reference attention engine (MATH.md section 1): for one head of one sequence it
// materializes the L x S scores scale * q.k + score terms, applies the mask, takes the row
// softmax and returns A V plus the value terms. It is the engine that returns attention maps,
// and the yardstick the fused engine is tested against.
#pragma once

#include <cmath>
#include <limits>

#include "attnlens/attention/mask.hpp"
#include "attnlens/attention/score_term.hpp"
#include "attnlens/attention/value_term.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// The kernel of one attention call: the range kernel scale * q.k, the domain-kernel score
// terms, the support, and the terms added to the averaged values.
template <class T>
struct AttentionKernel {
  T scale = T(1);
  const ScoreTerms<T>* terms = nullptr;        // may be null: no terms
  const BoundMask<T>* mask = nullptr;          // may be null: full support
  const ValueTerms<T>* value_terms = nullptr;  // may be null: out = A V
  bool content = true;  // false: no range kernel, the scores are the score terms alone
};

// One head of one sequence: projected queries, keys and values as (strided) views.
template <class T>
struct HeadInputs {
  Index batch = 0;
  Index head = 0;
  ConstMatrixRef<T> queries;  // L x d
  ConstMatrixRef<T> keys;     // S x d
  ConstMatrixRef<T> values;   // S x dv
};

namespace detail {

using SupportMask = Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// out = weights * values where value rows that are not finite reach only the queries whose
// support holds them: 0 * NaN is NaN, but a masked key must contribute nothing at all.
template <class T>
void finite_support_product(ConstMatrixRef<T> values, ConstMatrixRef<T> weights,
                            const SupportMask& in_support, MatrixRef<T> out) {
  Matrix<T> finite_values = values;
  for (Index j = 0; j < finite_values.rows(); ++j)
    if (!finite_values.row(j).allFinite()) finite_values.row(j).setZero();
  out.noalias() = weights * finite_values;
  for (Index j = 0; j < values.rows(); ++j) {
    if (values.row(j).allFinite()) continue;
    for (Index i = 0; i < out.rows(); ++i)
      if (in_support(i, j)) out.row(i) += weights(i, j) * values.row(j);
  }
}

}  // namespace detail

// weights (L x S) receives A, out (L x dv) receives A V. Masked keys never reach `out`, even
// when their values hold NaN or Inf; fully masked rows give zero weights and a zero output.
template <class T>
void reference_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                         MatrixRef<T> weights, MatrixRef<T> out) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  const TileCoords at{head.batch, head.head, 0, 0};

  if (kernel.content)
    weights.noalias() = kernel.scale * (head.queries * head.keys.transpose());
  else
    weights.setZero();
  if (kernel.terms)
    for (const auto& term : *kernel.terms)
      term->add(ScoreTile<T>{at, head.queries, head.keys}, weights);
  if (kernel.mask) kernel.mask->apply(at, weights);

  // The support must be read before the softmax turns -inf into weight 0.
  const bool values_finite = head.values.allFinite();
  detail::SupportMask in_support;
  if (!values_finite) in_support = weights.array() != neg_inf;

  softmax_rows<T>(weights);

  if (values_finite)
    out.noalias() = weights * head.values;
  else
    detail::finite_support_product<T>(head.values, weights, in_support, out);
  if (kernel.value_terms)
    for (const auto& term : *kernel.value_terms) term->add(at, weights, out);
}

}  // namespace attnlens
