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
  explicit NeutrenoTerm(T lambda) : lambda_(lambda) {}

  // context (B*L x E) += lambda (V^0 - V), V^0 = stack.first, nothing on a stack's first layer.
  // V^0 - V lives on the keys, so it needs as many keys as queries (the plan checks that per
  // sequence).
  void add(ConstMatrixRef<T> values, const StackValues<T>& stack,
           MatrixRef<T> context) const override {
    if (!stack.first) return;
    detail::require_matrix(*stack.first, context.rows(), context.cols(), "NeuTRENO V^0");
    detail::require_matrix(values, context.rows(), context.cols(), "NeuTRENO values");
    context += lambda_ * (*stack.first - values);
  }
  void add_backward(ConstMatrixRef<T> dcontext, const StackValues<T>& stack, MatrixRef<T> dvalues,
                    MatrixRef<T> dfirst) const override {
    if (!stack.first) return;
    dvalues -= lambda_ * dcontext;
    dfirst += lambda_ * dcontext;
  }

 private:
  T lambda_;
};

}  // namespace attnlens
