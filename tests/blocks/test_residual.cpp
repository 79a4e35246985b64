// Residual<T>: the fidelity term lambda_l (x_0 - x_l) of docs/math.md section 2, its options and
// their errors. (Its use inside a stack is tested with TransformerEncoder.)
#include <gtest/gtest.h>

#include "attnlens/blocks/residual.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(Residual, FidelityAddsLambdaTimesTheDistanceToTheInput) {
  const Residual<double> residual({ResidualType::fidelity, {0.25, 0.5}}, 2);
  Matrix<double> x0(1, 2), x(1, 2), next(1, 2);
  x0 << 1, 2;
  x << 3, -2;
  next << 10, 10;
  residual.add_fidelity_term(1, x0, x, next);
  EXPECT_EQ(next(0, 0), 10 + 0.5 * (1 - 3));
  EXPECT_EQ(next(0, 1), 10 + 0.5 * (2 + 2));
  residual.add_fidelity_term(0, x0, x, next);
  EXPECT_EQ(next(0, 0), 9 - 0.5);
}

TEST(Residual, StandardAddsNothingAndOneLambdaIsShared) {
  const Residual<float> standard({}, 3);
  Matrix<float> x0 = Matrix<float>::Ones(2, 2), x = Matrix<float>::Zero(2, 2), next = x;
  standard.add_fidelity_term(2, x0, x, next);
  EXPECT_EQ(next, x);
  const Residual<float> shared({ResidualType::fidelity, {0.4}}, 3);
  EXPECT_EQ(shared.lambda, Vector<float>::Constant(3, 0.4f));
}

TEST(Residual, LearnedLambdaIsOneNamedParameterStartingFromTheOptions) {
  Residual<double> zero({ResidualType::fidelity, {}, true}, 3);
  EXPECT_EQ(zero.lambda, Vector<double>::Zero(3));
  Residual<double> learned({ResidualType::fidelity, {0.1, 0.2}, true}, 2);
  int count = 0;
  for_each_parameter(learned, "encoder.", [&](const std::string& name, Vector<double>& p) {
    EXPECT_EQ(name, "encoder.fidelity_lambda");
    EXPECT_EQ(p, (Vector<double>(2) << 0.1, 0.2).finished());
    p[1] = 0.7;  // what loading does
    ++count;
  });
  EXPECT_EQ(count, 1);
  Matrix<double> x0 = Matrix<double>::Ones(1, 2), x = Matrix<double>::Zero(1, 2), next = x;
  learned.add_fidelity_term(1, x0, x, next);
  EXPECT_EQ(next(0, 0), 0.7);
  Residual<double> fixed({ResidualType::fidelity, {0.1}}, 2);
  for_each_parameter(fixed, "", [&](const std::string&, Vector<double>&) { ++count; });
  EXPECT_EQ(count, 1);  // a fixed lambda is no parameter
}

TEST(Residual, NamesRoundTripAndBadOptionsNameTheArgument) {
  for (ResidualType t : {ResidualType::standard, ResidualType::fidelity})
    EXPECT_EQ(residual_type_from_name(residual_type_name(t)), t);
  expect_error_naming<ArgumentError>(
      [] { residual_type_from_name("twicing", "config.residual.type"); }, "config.residual.type");
  expect_error_naming<ArgumentError>(
      [] {
        Residual<float>({ResidualType::fidelity, {}}, 2);
      },
      "ResidualOptions::lambda");
  expect_error_naming<ArgumentError>(
      [] {
        Residual<float>({ResidualType::fidelity, {1, 2, 3}}, 2);
      },
      "num_layers");
  expect_error_naming<ArgumentError>(
      [] {
        Residual<float>({ResidualType::fidelity, {INFINITY}}, 2);
      },
      "ResidualOptions::lambda[0]");
  expect_error_naming<ArgumentError>(
      [] {
        Residual<float>({ResidualType::standard, {}, true}, 2);
      },
      "ResidualOptions::learned");
  expect_error_naming<ArgumentError>(
      [] {
        Residual<float>({ResidualType::fidelity, {1, 2, 3}, true}, 2);
      },
      "or none (learned from 0)");
}

}  // namespace
}  // namespace attnlens
