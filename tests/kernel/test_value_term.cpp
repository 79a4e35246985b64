// The value-term extension point of the reference engine: out += f(weights), linear in the
// weights. A term adding A C equals attention over the values V + C.
#include <gtest/gtest.h>

#include "attnlens/core/init.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/value_term.hpp"
#include "support/fixtures.hpp"

namespace attnlens {
namespace {

// out += weights * offsets (rows key_begin ..): an extra value per key.
class KeyOffsets final : public ValueTerm<double> {
 public:
  explicit KeyOffsets(Matrix<double> offsets) : offsets_(std::move(offsets)) {}
  void check(const ScoreShape& shape, Index value_dim) const override {
    detail::require_matrix(offsets_, shape.keys, value_dim, "KeyOffsets");
  }
  void add(const TileCoords& at, ConstMatrixRef<double> weights,
           MatrixRef<double> out) const override {
    out.noalias() += weights * offsets_.middleRows(at.key_begin, weights.cols());
  }
  void add_backward(const TileCoords& at, ConstMatrixRef<double>, ConstMatrixRef<double> dout,
                    MatrixRef<double> dweights, KernelFactor<double>*) const override {
    dweights.noalias() += dout * offsets_.middleRows(at.key_begin, dweights.cols()).transpose();
  }

 private:
  Matrix<double> offsets_;
};

TEST(ValueTerm, AddsTheWeightedTermAfterTheSoftmax) {
  Rng rng(31);
  Matrix<double> q(4, 3), k(6, 3), v(6, 5), c(6, 5);
  for (Matrix<double>* m : {&q, &k, &v, &c}) init::normal(*m, rng);
  const ValueTerms<double> terms{std::make_shared<KeyOffsets>(c)};
  terms.front()->check({1, 1, 4, 6, 3}, 5);
  Matrix<double> weights(4, 6), out(4, 5), expected_weights(4, 6), expected(4, 5);
  AttentionMask<double> causal;
  causal.causal = true;
  const BoundMask<double> bound(causal, {1, 1, 4, 6});
  reference_attention<double>({0, 0, q, k, v}, {dot_product_range(0.5), nullptr, &bound, &terms},
                              weights, out);
  const Matrix<double> shifted = v + c;
  reference_attention<double>({0, 0, q, k, shifted}, {dot_product_range(0.5), nullptr, &bound},
                              expected_weights, expected);
  EXPECT_EQ(weights, expected_weights);
  ATTNLENS_EXPECT_CLOSE(out, expected, 1e-14);
  EXPECT_GT(testing::max_abs_error(out, weights * v), 1e-3);
}

}  // namespace
}  // namespace attnlens
