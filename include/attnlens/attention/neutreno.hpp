// NeuTRENO's fidelity term (Nguyen et al., NeurIPS 2023; docs/math.md section 2): the smoother's
// output plus lambda (V^0 - V), V^0 the first layer's values, added to every head at once.
#pragma once

#include "attnlens/attention/plan.hpp"
#include "attnlens/core/errors.hpp"
#include "attnlens/core/types.hpp"

namespace attnlens {

template <class T>
class NeutrenoTerm final : public ContextTerm<T> {
 public:
  // first_values: V^0, B*S x E; lambda finite.
  NeutrenoTerm(const Matrix<T>& first_values, T lambda) : first_(first_values), lambda_(lambda) {}

  // context (B*L x E) += lambda (V^0 - V): V^0 - V lives on the keys, so it needs as many keys
  // as queries (the plan checks that per sequence).
  void add(ConstMatrixRef<T> values, MatrixRef<T> context) const override {
    detail::require_matrix(first_, context.rows(), context.cols(), "NeuTRENO V^0");
    detail::require_matrix(values, context.rows(), context.cols(), "NeuTRENO values");
    context += lambda_ * (first_ - values);
  }

 private:
  const Matrix<T>& first_;
  T lambda_;
};

}  // namespace attnlens
