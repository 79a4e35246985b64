// An attention plan: what MultiHeadAttention executes for one call (docs/architecture.md). It
// names the kernel's factors (range kernel, normalization epsilon, boosting order, the score
// terms and query/key transforms of the variant), per-key weights computed from a head's keys
// and values, a term on the smoother's output, and what the call needs from other layers. The
// variants of docs/math.md section 2 are plans (attention/variant.hpp); the module knows none of
// them.
#pragma once

#include <memory>
#include <vector>

#include "attnlens/core/types.hpp"
#include "attnlens/kernel/mask.hpp"
#include "attnlens/kernel/query_key_transform.hpp"
#include "attnlens/kernel/range_kernel.hpp"
#include "attnlens/kernel/score_term.hpp"

namespace attnlens {

// Projected values of other layers of a stack, for the plans that read them (B*S x E each, one
// token per row, as MultiHeadOutput::values). Null means "this is the stack's first layer":
// NeuTRENO then adds no term and elliptical uses the metric m = 1.
template <class T>
struct StackValues {
  const Matrix<T>* first = nullptr;     // V^0, the first layer's values (NeuTRENO)
  const Matrix<T>* previous = nullptr;  // V^{l-1}, the previous layer's values (elliptical)
};

// One call as a plan sees it: the problem's extents, its mask, the other layers' values and
// this layer's projected values (B*S x E).
template <class T>
struct PlanContext {
  ScoreShape shape;
  const AttentionMask<T>& mask;
  const StackValues<T>& stack;
  ConstMatrixRef<T> values;
};

// Per-key weights of one (sequence, head), A_ij = w_j K_ij / sum_l u_l K_il (robust KDE).
template <class T>
class KeyWeighting {
 public:
  virtual ~KeyWeighting() = default;
  // keys (after the query/key transforms) and values of the head, S rows each; real[j] says
  // whether key j is a real token (not padding). numerator = w, denominator = u, S entries.
  virtual void weights(ConstMatrixRef<T> keys, ConstMatrixRef<T> values,
                       const std::vector<char>& real, Vector<T>& numerator,
                       Vector<T>& denominator) const = 0;
  // The backward of weights: given dL/dw (dnumerator) and dL/du (ddenominator), S entries each,
  // dkeys and dvalues (S rows each) += the gradients through the weights.
  virtual void weights_backward(ConstMatrixRef<T> keys, ConstMatrixRef<T> values,
                                const std::vector<char>& real, const Vector<T>& dnumerator,
                                const Vector<T>& ddenominator, MatrixRef<T> dkeys,
                                MatrixRef<T> dvalues) const = 0;
};

// A term added to the concatenated heads' output before the output projection (NeuTRENO's
// fidelity term): context (B*L x E) += f(values, stack), values (B*S x E) this layer's. The
// stack is passed at each call, so a term kept in a cache holds no reference to it.
template <class T>
class ContextTerm {
 public:
  virtual ~ContextTerm() = default;
  virtual void add(ConstMatrixRef<T> values, const StackValues<T>& stack,
                   MatrixRef<T> context) const = 0;
  // The backward of add, given dcontext = dL/dcontext: dvalues += dL/d(this layer's values),
  // dfirst += dL/dV^0 (the stack's first layer's values, B*S x E), for the same stack.
  virtual void add_backward(ConstMatrixRef<T> dcontext, const StackValues<T>& stack,
                            MatrixRef<T> dvalues, MatrixRef<T> dfirst) const = 0;
};

template <class T>
struct AttentionPlan {
  RangeKernel<T> range;  // scale = 1 / sqrt(d) for every plan
  T epsilon = T(0);      // of the normalization A = K / (sum K + epsilon)
  Index boost = 0;       // boosting order
  // The plan's factors, applied after the module's own (positional) ones.
  ScoreTerms<T> score_terms;
  QueryKeyTransforms<T> transforms;
  std::shared_ptr<const KeyWeighting<T>> key_weighting;  // null: every key weighs 1
  std::shared_ptr<const ContextTerm<T>> context_term;    // null: none
  // The plan reads StackValues, so the module returns its values for the next layers.
  bool reads_stack_values = false;
};

}  // namespace attnlens
