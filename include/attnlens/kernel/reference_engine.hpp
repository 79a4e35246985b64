// The reference attention engine (MATH.md sections 1-2): for one head of one sequence it
// materializes the L x S scores range(q, k) + score terms, applies the support, normalizes
// the kernel rows and returns A V plus the value terms, boosted to the kernel's order. It is
// the engine that returns attention maps, and the yardstick the fused engine is tested against.
#pragma once

#include <cmath>
#include <limits>

#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/range_kernel.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"
#include "attnlens/kernel/window.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

// The largest boosting order: each order is one more pass of attention, and the iteration
// z_{m+1} = z_m + A (y - z_m) has converged to within rounding of y long before it.
inline constexpr Index k_max_boost = 100;

// The kernel of one attention call, factor by factor (DESIGN.md section 1): the range kernel,
// the domain-kernel score terms, the support (mask and local window), the normalization, the
// value terms and the iteration order.
template <class T>
struct AttentionKernel {
  RangeKernel<T> range;                        // content: scale * q.k by default
  const ScoreTerms<T>* terms = nullptr;        // may be null: no domain terms
  const BoundMask<T>* mask = nullptr;          // may be null: no mask
  const ValueTerms<T>* value_terms = nullptr;  // may be null: out = A V
  LocalWindow window = {};                     // inactive by default: every key
  // A_ij = K_ij / (sum_j K_ij + epsilon); FourierFormer uses 1e-6, softmax 0.
  T epsilon = T(0);
  // Boosting order k (MATH.md section 2): z_0 = F(V), z_{m+1} = z_m + F(V - z_m) for m < k,
  // with the smoother F(X) = A X + value terms; 1 is twicing. Needs as many keys as queries.
  Index boost = 0;
};

// One head of one sequence: projected queries, keys and values as (strided) views.
template <class T>
struct HeadInputs {
  Index batch = 0;
  Index head = 0;
  ConstMatrixRef<T> queries;  // L x d
  ConstMatrixRef<T> keys;     // S x d
  ConstMatrixRef<T> values;   // S x dv
  // Optional per-key weights (S entries each): A_ij = w_j K_ij / sum_l u_l K_il with
  // w = numerator, u = denominator weights (robust KDE attention); null means all ones.
  const T* numerator_key_weights = nullptr;
  const T* denominator_key_weights = nullptr;
};

// Throws when a kernel cannot serve a problem of this shape. Boosting smooths V - z, where
// z lives on the queries and V on the keys, so it needs as many keys as queries.
template <class T>
void check_kernel(const AttentionKernel<T>& kernel, const ScoreShape& shape) {
  detail::require_argument(kernel.boost >= 0, "AttentionKernel::boost", ">= 0", kernel.boost);
  detail::require_argument(kernel.boost <= k_max_boost, "AttentionKernel::boost",
                           detail::concat("<= ", k_max_boost, " (k_max_boost)"), kernel.boost);
  detail::require_argument(kernel.epsilon >= T(0), "AttentionKernel::epsilon", ">= 0",
                           kernel.epsilon);
  if (kernel.range.type == RangeKernelType::negative_squared_distance)
    detail::require_argument(kernel.range.scale >= T(0) && std::isfinite(kernel.range.scale),
                             "RangeKernel::scale", "finite and >= 0 for negative_squared_distance",
                             kernel.range.scale);
  if (kernel.boost > 0)
    detail::require_shape(shape.queries == shape.keys, "keys of a boosted attention",
                          detail::concat(shape.queries, " (as many as queries)"),
                          detail::concat(shape.keys));
  check_window(kernel.window, shape);
}

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

// Throws ShapeError / ArgumentError unless the head's inputs, an output of out_rows x out_cols
// and the kernel fit together.
template <class T>
void check_head_inputs(const HeadInputs<T>& head, const AttentionKernel<T>& kernel, Index out_rows,
                       Index out_cols) {
  const Index L = head.queries.rows(), S = head.keys.rows(), dv = head.values.cols();
  if (kernel.range.type != RangeKernelType::none)
    detail::require_shape(head.keys.cols() == head.queries.cols(), "keys",
                          detail::concat("width ", head.queries.cols(), " like the queries"),
                          detail::concat("width ", head.keys.cols()));
  detail::require_shape(head.values.rows() == S, "values", detail::concat(S, " rows like the keys"),
                        detail::concat(head.values.rows(), " rows"));
  detail::require_shape(out_rows == L && out_cols == dv, "out",
                        detail::concat(L, " x ", dv, " (queries x value width)"),
                        detail::concat(out_rows, " x ", out_cols));
  check_kernel<T>(kernel, ScoreShape{1, 1, L, S, head.queries.cols()});
}

// weights (L x S) receives A, out (L x dv) the (boosted) smoother output. Masked keys never
// reach `out`, even when their values hold NaN or Inf; fully masked rows give zero weights and
// a zero output.
template <class T>
void reference_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                         MatrixRef<T> weights, MatrixRef<T> out) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  check_head_inputs<T>(head, kernel, out.rows(), out.cols());
  detail::require_shape(
      weights.rows() == head.queries.rows() && weights.cols() == head.keys.rows(), "weights",
      detail::concat(head.queries.rows(), " x ", head.keys.rows(), " (queries x keys)"),
      detail::concat(weights.rows(), " x ", weights.cols()));
  const TileCoords at{head.batch, head.head, 0, 0};

  SerialGemm<T> gemm(head.queries.rows(), head.keys.rows(), head.queries.cols());
  range_scores<T>(kernel.range, head.queries, head.keys, weights, gemm);
  if (kernel.terms)
    for (const auto& term : *kernel.terms)
      term->add(ScoreTile<T>{at, head.queries, head.keys}, weights);
  if (kernel.mask) kernel.mask->apply(at, weights);
  apply_window<T>(kernel.window, at, weights);

  // The support must be read before normalization turns -inf into weight 0.
  const detail::SupportMask in_support = weights.array() != neg_inf;
  detail::normalize_kernel_rows<T>(weights, head.numerator_key_weights,
                                   head.denominator_key_weights, kernel.epsilon);

  const auto smooth = [&](ConstMatrixRef<T> values, MatrixRef<T> result) {
    if (values.allFinite())
      result.noalias() = weights * values;
    else
      detail::finite_support_product<T>(values, weights, in_support, result);
    if (kernel.value_terms)
      for (const auto& term : *kernel.value_terms) term->add(at, weights, result);
  };
  smooth(head.values, out);
  if (kernel.boost == 0) return;
  Matrix<T> residual(out.rows(), out.cols()), correction(out.rows(), out.cols());
  for (Index step = 0; step < kernel.boost; ++step) {
    residual = head.values - out;
    smooth(residual, correction);
    out += correction;
  }
}

}  // namespace attnlens
