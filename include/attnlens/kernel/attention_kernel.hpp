// The kernel of one attention call, factor by factor (docs/architecture.md): range kernel, score
// terms (domain kernels), support (mask and local window), normalization (per-key weights,
// epsilon), value terms and boosting order; and one head's inputs. Both engines consume it.
#pragma once

#include <cmath>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/range_kernel.hpp"
#include "attnlens/kernel/score_term.hpp"
#include "attnlens/kernel/value_term.hpp"
#include "attnlens/kernel/window.hpp"

namespace attnlens {

// The largest boosting order: each order is one more pass of attention, and the iteration
// z_{m+1} = z_m + A (y - z_m) has converged to within rounding of y long before it.
inline constexpr Index k_max_boost = 100;

// The kernel of one attention call, factor by factor (docs/architecture.md): the range kernel,
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
  // Boosting order k (docs/math.md section 2): z_0 = F(V), z_{m+1} = z_m + F(V - z_m) for m < k,
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
  // An intervention on the head's probabilities after normalization, A -> scale A (attribution
  // scales them, pruning zeroes a head); 1 leaves the head as it is.
  T scale = T(1);
};

// The same head with other values: boosting smooths residuals with the head's kernel.
template <class T>
HeadInputs<T> with_values(const HeadInputs<T>& head, ConstMatrixRef<T> values) {
  return {head.batch,
          head.head,
          head.queries,
          head.keys,
          values,
          head.numerator_key_weights,
          head.denominator_key_weights,
          head.scale};
}

namespace detail {

// The normalization of a head's kernel rows: its key weights and the kernel's epsilon.
template <class T>
KernelNormalization<T> head_normalization(const HeadInputs<T>& head,
                                          const AttentionKernel<T>& kernel) {
  return {head.numerator_key_weights, head.denominator_key_weights, kernel.epsilon, head.scale};
}

}  // namespace detail

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

}  // namespace attnlens
