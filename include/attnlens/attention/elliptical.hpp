// Elliptical attention (Nielsen et al., NeurIPS 2024; docs/math.md section 2): the range kernel
// (q_i * m).k_j / sqrt(d) with a per-head diagonal metric m estimated from how the values moved
// between layers, m_c = mean_n |v^l_{n,c} - v^{l-1}_{n,c}| / delta, then m / max_c m_c. As in the
// paper's code the mean runs over the tokens of one sequence, separately for each sequence and
// head (over the sequence's real tokens when some are padding). The metric is applied as a
// query transform, so both engines serve it unchanged.
#pragma once

#include <utility>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/query_key_transform.hpp"

namespace attnlens {

namespace detail {
struct EveryToken {
  bool operator()(Index, Index) const { return true; }
};
}  // namespace detail

// The metric of every (sequence, head): row b*H + h of the result (B*H x d). values and
// previous are B*S x E (one token per row, heads as column blocks of width E / heads). delta
// cancels in the max-scaling; it is kept as published. is_real(b, n) says whether token n of
// sequence b takes part in the mean (padding does not). A head whose values did not move gets
// m = 1 (plain attention) instead of 0/0.
template <class T, class IsReal = detail::EveryToken>
Matrix<T> elliptical_metric(ConstMatrixRef<T> values, ConstMatrixRef<T> previous, Index batch,
                            Index heads, T delta, const IsReal& is_real = IsReal{}) {
  detail::require_argument(delta > T(0), "elliptical delta", "> 0", delta);
  detail::require_argument(
      batch > 0 && heads > 0 && values.rows() % batch == 0 && values.cols() % heads == 0,
      "elliptical_metric batch x heads",
      detail::concat("divisors of ", values.rows(), " x ", values.cols()),
      detail::concat(batch, " x ", heads));
  detail::require_shape(previous.rows() == values.rows() && previous.cols() == values.cols(),
                        "previous layer's values",
                        detail::concat(values.rows(), " x ", values.cols(), " like the values"),
                        detail::concat(previous.rows(), " x ", previous.cols()));
  const Index S = values.rows() / batch, d = values.cols() / heads;
  Matrix<T> metric(batch * heads, d);
  metric.setZero();
  for (Index b = 0; b < batch; ++b) {
    Index count = 0;
    for (Index n = 0; n < S; ++n) {
      if (!is_real(b, n)) continue;
      ++count;
      for (Index h = 0; h < heads; ++h)
        metric.row(b * heads + h) +=
            (values.block(b * S + n, h * d, 1, d) - previous.block(b * S + n, h * d, 1, d))
                .cwiseAbs();
    }
    for (Index h = 0; h < heads; ++h) {
      auto m = metric.row(b * heads + h);
      if (count > 0) m /= static_cast<T>(count) * delta;
      const T largest = m.maxCoeff();
      if (largest > T(0))
        m /= largest;
      else
        m.setOnes();
    }
  }
  return metric;
}

// Multiplies the queries of sequence b, head h by the diagonal metric row b*H + h.
template <class T>
class QueryMetric final : public QueryKeyTransform<T> {
 public:
  QueryMetric(Matrix<T> metric_rows, Index heads) : metric(std::move(metric_rows)), heads_(heads) {}

  void check(const ScoreShape& shape) const override {
    detail::require_shape(metric.rows() == shape.batch * shape.heads &&
                              metric.cols() == shape.head_dim && heads_ == shape.heads,
                          "QueryMetric metric",
                          detail::concat(shape.batch * shape.heads, " x ", shape.head_dim,
                                         " (batch*heads x head width)"),
                          detail::concat(metric.rows(), " x ", metric.cols()));
  }
  void transform_queries(const RowCoords& at, MatrixRef<T> queries) const override {
    queries.array().rowwise() *= metric.row(at.batch * heads_ + at.head).array();
  }
  void transform_keys(const RowCoords&, MatrixRef<T>) const override {}
  // No gradient flows through the metric (docs/math.md section 2.8): it scales dq as it scaled q.
  void backward_queries(const RowCoords& at, ConstMatrixRef<T>, MatrixRef<T> dqueries,
                        KernelFactor<T>*) const override {
    dqueries.array().rowwise() *= metric.row(at.batch * heads_ + at.head).array();
  }
  void backward_keys(const RowCoords&, ConstMatrixRef<T>, MatrixRef<T>,
                     KernelFactor<T>*) const override {}

  Matrix<T> metric;  // B*H x d

 private:
  Index heads_;
};

}  // namespace attnlens
