// A Cauchy distance kernel, the worked example of docs/architecture.md: the domain factor
// K_h(i, j) = 1 / (1 + (i - j)^2 / s_h^2) with a learned width s_h per head, in log space
// S_h(i, j) += -log(1 + (i - j)^2 / s_h^2) (docs/math.md section 3.10). Heavier tails than the
// Gaussian distance kernel of bilateral attention: far keys are damped, never cut off.
#pragma once

#include <cmath>
#include <memory>
#include <string>

#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

struct CauchyOptions {
  Index num_heads = 1;
  double width = 4.0;  // s_h of every head at the start
};

template <class T>
class CauchyDistance final : public ScoreTerm<T> {
 public:
  explicit CauchyDistance(const CauchyOptions& o) {
    detail::require_argument(o.num_heads > 0, "CauchyOptions::num_heads", "> 0", o.num_heads);
    detail::require_argument(o.width > 0 && std::isfinite(o.width), "CauchyOptions::width",
                             "finite and > 0", o.width);
    width = Vector<T>::Constant(o.num_heads, static_cast<T>(o.width));
  }
  std::shared_ptr<KernelFactor<T>> clone() const override {
    return std::make_shared<CauchyDistance>(*this);
  }
  void visit_parameters(const std::string& prefix, ParameterVisitor<T>& visit) override {
    visit(prefix + "width", width);
  }

  void check(const ScoreShape& shape) const override {
    detail::require_shape(width.size() == shape.heads, "CauchyDistance width",
                          detail::concat("[", shape.heads, "] (one per head)"),
                          detail::concat("[", width.size(), "]"));
    detail::require_argument((width.array() > T(0)).all(), "CauchyDistance width", "> 0",
                             width.transpose());
  }

  void add(const ScoreTile<T>& tile, MatrixRef<T> scores) const override {
    const T inverse_square = T(1) / (width[tile.at.head] * width[tile.at.head]);
    for (Index r = 0; r < scores.rows(); ++r)
      for (Index c = 0; c < scores.cols(); ++c) {
        // Offset 0 adds exactly 0, also for a width whose 1 / s^2 overflows (0 * inf = NaN).
        const auto offset = static_cast<T>(tile.at.key_begin + c - tile.at.query_begin - r);
        if (offset != T(0)) scores(r, c) -= std::log1p(offset * offset * inverse_square);
      }
  }

  // d/ds of -log(1 + o^2 / s^2) is 2 o^2 / (s (s^2 + o^2)).
  void add_backward(const ScoreTile<T>& tile, ConstMatrixRef<T> dscores,
                    ScoreTileGradient<T>& gradient) const override {
    auto* into = detail::gradient_as<CauchyDistance>(gradient.parameters);
    if (!into) return;
    const T s = width[tile.at.head];
    T sum = 0;
    for (Index r = 0; r < dscores.rows(); ++r)
      for (Index c = 0; c < dscores.cols(); ++c) {
        const auto offset = static_cast<T>(tile.at.key_begin + c - tile.at.query_begin - r);
        if (offset != T(0))
          sum += dscores(r, c) * T(2) * offset * offset / (s * (s * s + offset * offset));
      }
    into->width[tile.at.head] += sum;
  }

  Vector<T> width;  // s_h, one per head
};

}  // namespace attnlens
