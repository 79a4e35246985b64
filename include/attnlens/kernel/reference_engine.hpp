// The reference attention engine (docs/math.md sections 1-2): for one head of one sequence it
// materializes the L x S scores as one tile, normalizes the kernel rows into A and returns the
// smoother output A V plus the value terms, boosted to the kernel's order. It is the engine
// that returns attention maps, and the yardstick the fused engine is tested against.
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/gemm.hpp"
#include "attnlens/core/parallel.hpp"
#include "attnlens/core/softmax.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/attention_backward.hpp"
#include "attnlens/kernel/attention_kernel.hpp"
#include "attnlens/kernel/boosting.hpp"
#include "attnlens/kernel/tile.hpp"

namespace attnlens {

// weights (L x S) receives A, out (L x dv) the (boosted) smoother output. Masked keys never
// reach `out`, even when their values hold NaN or Inf; fully masked rows give zero weights and
// a zero output. With `iterates` set, it receives z_0 .. z_{boost-1} (L x dv each); with
// row_logsumexp set (L entries), each row's log-denominator, what the backward pass
// (reference_attention_backward) recomputes A from.
template <class T>
void reference_attention(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                         MatrixRef<T> weights, MatrixRef<T> out,
                         std::vector<Matrix<T>>* iterates = nullptr, T* row_logsumexp = nullptr) {
  constexpr T neg_inf = -std::numeric_limits<T>::infinity();
  check_head_inputs<T>(head, kernel, out.rows(), out.cols());
  const Index L = head.queries.rows(), S = head.keys.rows(), dv = head.values.cols();
  detail::require_shape(weights.rows() == L && weights.cols() == S, "weights",
                        detail::concat(L, " x ", S, " (queries x keys)"),
                        detail::concat(weights.rows(), " x ", weights.cols()));
  const TileCoords at{head.batch, head.head, 0, 0};

  SerialGemm<T> score_gemm(L, S, head.queries.cols());
  tile_scores<T>(kernel, at, head.queries, head.keys, weights, score_gemm);
  // The support must be read before normalization turns -inf into weight 0.
  const Eigen::Array<bool, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> in_support =
      weights.array() != neg_inf;
  detail::normalize_kernel_rows<T>(weights, detail::head_normalization(head, kernel),
                                   row_logsumexp);

  SerialGemm<T> value_gemm(L, dv, S);
  Matrix<T> finite_values;  // sized only when some values are NaN or Inf
  const auto smooth = [&](auto&& input_at, auto&& target_at) {
    const ConstMatrixRef<T> values = input_at(0);
    const bool values_finite = values.allFinite();
    if (!values_finite) finite_values.resize(S, dv);
    MatrixRef<T> target = target_at(0);
    target.setZero();
    add_smoothed_values<T>(
        kernel, at, weights, values, values_finite,
        [&](Index r, Index c) { return in_support(r, c); }, finite_values, value_gemm, target);
  };
  if (iterates) iterates->resize(static_cast<std::size_t>(kernel.boost));
  boosted_smoothing<T>(
      1, kernel.boost, [&](Index) { return head.values; }, [&](Index) { return out; }, smooth,
      ParallelOptions{1},
      [&](Index step, Index, const auto& z) {
        if (iterates) (*iterates)[static_cast<std::size_t>(step)] = z;
      });
}

// The backward pass of reference_attention: the backward engine (kernel/attention_backward.hpp)
// with the whole L x S problem as one tile.
template <class T>
void reference_attention_backward(const HeadInputs<T>& head, const AttentionKernel<T>& kernel,
                                  const HeadBackward<T>& data, KernelGradients<T>& gradients) {
  const FusedOptions whole{{head.queries.rows(), head.keys.rows()}, ParallelOptions{1}};
  attention_heads_backward<T>(
      1, [&](Index) { return head; }, [&](Index) { return data; }, kernel, whole, gradients);
}

}  // namespace attnlens
