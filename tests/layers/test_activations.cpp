// The activations against values computed independently (Python's math.erf / math.tanh in
// float64), and name parsing.
#include <gtest/gtest.h>

#include "attnlens/layers/activations.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

template <class T>
Matrix<T> applied(Activation a) {
  Matrix<T> x(1, 5);
  x << T(-3), T(-0.5), T(0), T(1), T(2.5);
  apply_activation<T>(a, x);
  return x;
}

TEST(Activations, ReluGeluAndTanhGeluMatchReferenceValues) {
  // 0.5 x (1 + erf(x / sqrt 2)) and 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
  const double gelu[] = {-0.00404969409489031, -0.15426876936299344, 0.0, 0.8413447460685429,
                         2.4844758366855597};
  const double gelu_tanh[] = {-0.0036373920817729943, -0.15428599017485606, 0.0, 0.8411919906082768,
                              2.484915733910001};
  const double relu[] = {0, 0, 0, 1, 2.5};
  const auto d_relu = applied<double>(Activation::relu);
  const auto d_gelu = applied<double>(Activation::gelu);
  const auto d_tanh = applied<double>(Activation::gelu_tanh);
  const auto f_gelu = applied<float>(Activation::gelu);
  for (Index j = 0; j < 5; ++j) {
    EXPECT_EQ(d_relu(0, j), relu[j]);
    EXPECT_NEAR(d_gelu(0, j), gelu[j], 1e-15);
    EXPECT_NEAR(d_tanh(0, j), gelu_tanh[j], 1e-15);
    EXPECT_NEAR(f_gelu(0, j), gelu[j], 1e-6);
  }
}

TEST(Activations, NamesRoundTripAndUnknownNamesAreRejected) {
  for (Activation a : {Activation::relu, Activation::gelu, Activation::gelu_tanh})
    EXPECT_EQ(activation_from_name(activation_name(a)), a);
  testing::expect_error_naming<ArgumentError>(
      [] { activation_from_name("swish", "config.activation"); }, "config.activation");
  testing::expect_error_naming<ArgumentError>([] { activation_from_name("Relu"); }, "Relu");
}

}  // namespace
}  // namespace attnlens
