// The activations against values computed independently (Python's math.erf / math.tanh in
// float64), their derivatives against central differences and PyTorch autograd
// (tests/reference/oracles/layers.py), and name parsing.
#include <gtest/gtest.h>

#include "attnlens/layers/activations.hpp"
#include "support/blocks.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

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

constexpr Activation k_all_activations[] = {Activation::relu, Activation::gelu,
                                            Activation::gelu_tanh};

TEST(ActivationBackward, EqualsCentralDifferences) {
  Rng rng(41);
  Matrix<double> x(4, 6);  // |x| >= 0.1: central differences never straddle relu's kink
  for (Index e = 0; e < x.size(); ++e) {
    const double v = 0.1 + 2 * std::abs(rng.normal<double>());
    x.data()[e] = e % 2 ? v : -v;
  }
  const Matrix<double> probe = testing::random_probe(4, 6, 42);
  for (const Activation a : k_all_activations) {
    SCOPED_TRACE(activation_name(a));
    const auto loss = [&] {
      Matrix<double> y = x;
      apply_activation<double>(a, y);
      return (y.array() * probe.array()).sum();
    };
    Matrix<double> dx = probe;
    activation_backward<double>(a, x, dx);
    ATTNLENS_EXPECT_GRADIENT(loss, x.data(), x.size(), dx.data(), 1e-6);
  }
}

TEST(ActivationBackward, DerivativesAtZeroAreThoseOfPyTorch) {
  // relu's is 0 (threshold_backward), both GELUs' 1/2.
  const Matrix<double> zero = Matrix<double>::Zero(1, 1);
  for (const auto& [a, derivative] :
       {std::pair{Activation::relu, 0.0}, std::pair{Activation::gelu, 0.5},
        std::pair{Activation::gelu_tanh, 0.5}}) {
    Matrix<double> dy = Matrix<double>::Ones(1, 1);
    activation_backward<double>(a, zero, dy);
    EXPECT_EQ(dy(0, 0), derivative) << activation_name(a);
  }
}

template <class T>
void check_activation_backward_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers_grad");
  const int checked =
      testing::for_each_case(file, "activation", [&](const auto& c, const auto& prefix) {
        const Matrix<T> x = file.get<T>(prefix + "input").matrix();
        Matrix<T> dx = file.get<T>(prefix + "grad_output").matrix();
        activation_backward<T>(activation_from_name(c["activation"]), x, dx);
        ATTNLENS_EXPECT_GRADIENT_MATCHES(T, dx, file.get<T>(prefix + "grad_input").matrix());
      });
  EXPECT_EQ(checked, 3);
}

TEST(ActivationBackward, MatchesPyTorchAutogradFloat) {
  check_activation_backward_against_pytorch<float>();
}
TEST(ActivationBackward, MatchesPyTorchAutogradDouble) {
  check_activation_backward_against_pytorch<double>();
}

TEST(ActivationBackward, BadShapesNameTheArgument) {
  Matrix<float> dy(2, 3);
  testing::expect_error_naming<ShapeError>(
      [&] { activation_backward<float>(Activation::gelu, Matrix<float>(3, 2), dy); },
      "activation_backward dy: expected 3 x 2, got 2 x 3");
}

}  // namespace
}  // namespace attnlens

namespace attnlens {
namespace {

// Float GELU and its derivative (the AVX-512 path through erfc where the CPU has it, std::erf
// elsewhere) against the same formulas in long double, on a grid over [-12, 12] with the
// strided rows the feed-forward block hands over: relative error 2e-6 (a few float ulps: erfc's
// fit is good to 1.2e-7, exp to 1 ulp) plus 2e-7 x^2 / 2 where the value is a normal float, else
// 1e-37 absolute. The second term is the float rounding of x / sqrt 2 and of its square, which
// moves exp(-x^2 / 2) by up to x^2 / 2 * 2^-23 relative: inherent to evaluating in float (at
// x = -12, where GELU is 2e-32, 1e-5 relative).
TEST(Activations, FloatGeluKeepsItsRelativeAccuracyInTheTails) {
  constexpr Index rows = 3, cols = 801;
  Matrix<float> store(rows, cols + 5);
  auto x = store.leftCols(cols);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c)
      x(r, c) = -12.0f + 24.0f * static_cast<float>(c) / (cols - 1) + 0.01f * static_cast<float>(r);
  const Matrix<float> inputs = x;
  const auto exact = [](long double v) { return v * 0.5L * std::erfc(-v / std::sqrt(2.0L)); };
  const auto exact_derivative = [](long double v) {
    const long double pi = 3.141592653589793238462643383279502884L;
    return 0.5L * std::erfc(-v / std::sqrt(2.0L)) + v * std::exp(-0.5L * v * v) / std::sqrt(2 * pi);
  };
  // scale: |expected|, or for the derivative the sum of its two terms' sizes, |Phi| + |x phi|,
  // since the sum cancels to 0 at x = -0.75 (PyTorch's formula, evaluated the same way).
  const auto check = [](long double expected, long double scale, float actual, const char* what,
                        float at) {
    const long double error = std::fabs(static_cast<long double>(actual) - expected);
    const long double relative = 2e-6L + 2e-7L * static_cast<long double>(at) * at / 2;
    const long double bound = scale > 1.2e-38L ? relative * scale : 1e-37L;
    EXPECT_LE(error, bound) << what << " at " << at << ": " << actual << " vs " << expected;
  };
  MatrixRef<float> view = x;
  apply_activation<float>(Activation::gelu, view);
  Matrix<float> dy_store = Matrix<float>::Ones(rows, cols + 3);
  MatrixRef<float> dy = dy_store.leftCols(cols);
  activation_backward<float>(Activation::gelu, inputs, dy);
  for (Index r = 0; r < rows; ++r)
    for (Index c = 0; c < cols; ++c) {
      const float v = inputs(r, c);
      const long double cdf = 0.5L * std::erfc(-v / std::sqrt(2.0L));
      const long double density_term = exact_derivative(v) - cdf;
      check(exact(v), std::fabs(exact(v)), x(r, c), "gelu", v);
      check(exact_derivative(v), std::fabs(cdf) + std::fabs(density_term), dy(r, c), "gelu'", v);
    }
}

}  // namespace
}  // namespace attnlens
