// Linear's forward pass on small exact cases, its backward pass against central differences
// and PyTorch autograd (tests/reference/oracles/layers.py), and bad input.
#include <gtest/gtest.h>

#include <string>

#include "attnlens/layers/linear.hpp"
#include "support/blocks.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(Linear, ComputesXWTransposePlusBias) {
  Linear<double> linear(LinearOptions{3, 2, true});
  linear.weight << 1, 2, 3, -1, 0, 1;
  linear.bias << 0.5, -0.5;
  Matrix<double> x(2, 3);
  x << 1, 1, 1, 2, 0, -1;
  Matrix<double> expected(2, 2);
  expected << 6.5, -0.5, -0.5, -3.5;
  EXPECT_EQ(linear.forward(x), expected);
}

TEST(Linear, WithoutBias) {
  Linear<float> linear(LinearOptions{2, 2, false});
  EXPECT_FALSE(linear.has_bias());
  linear.weight << 1, 0, 0, 2;
  Matrix<float> x(1, 2);
  x << 3, 4;
  EXPECT_EQ(linear.forward(x)(0, 1), 8.0f);
}

TEST(Linear, BadShapesNameTheArgument) {
  EXPECT_THROW(Linear<float>(LinearOptions{0, 2, true}), ArgumentError);
  Linear<float> linear(LinearOptions{3, 2, true});
  Matrix<float> x(4, 2);
  try {
    linear.forward(x);
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("Linear input"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("expected 3"), std::string::npos) << e.what();
  }
  linear.bias.resize(5);
  EXPECT_THROW(linear.check_parameters("out_proj"), ShapeError);
}

// A Linear with parameters N(0, 1) (away from nn.Linear's initial range) and an input.
Linear<double> random_linear(Index in, Index out, bool bias, Rng& rng) {
  Linear<double> linear(LinearOptions{in, out, bias});
  init::normal(linear.weight, rng);
  init::normal(linear.bias, rng);
  return linear;
}

TEST(LinearBackward, EqualsCentralDifferencesWithAndWithoutBias) {
  for (const bool bias : {true, false}) {
    SCOPED_TRACE(bias ? "bias" : "no bias");
    Rng rng(21);
    Linear<double> linear = random_linear(5, 3, bias, rng);
    Matrix<double> x(7, 5);
    init::normal(x, rng);
    const Matrix<double> probe = testing::random_probe(7, 3, 22);
    const auto loss = [&] { return (linear.forward(x).array() * probe.array()).sum(); };
    Linear<double> gradient = zeros_like(linear);
    Matrix<double> dx = linear.backward(x, probe, gradient);
    ATTNLENS_EXPECT_GRADIENT(loss, x.data(), x.size(), dx.data(), 1e-6);
    testing::expect_parameter_gradients(linear, gradient, loss);
  }
}

TEST(LinearBackward, AccumulatesParameterGradientsAndOverwritesNothingElse) {
  Rng rng(23);
  const Linear<double> linear = random_linear(4, 6, true, rng);
  Matrix<double> x(5, 4), dy(5, 6);
  init::normal(x, rng);
  init::normal(dy, rng);
  Linear<double> once = zeros_like(linear), twice = zeros_like(linear);
  const Matrix<double> dx = linear.backward(x, dy, once);
  for (int call = 0; call < 2; ++call)
    EXPECT_EQ(linear.backward(x, dy, twice), dx);  // returned, not accumulated
  ATTNLENS_EXPECT_CLOSE(twice.weight, 2 * once.weight, 1e-13);
  ATTNLENS_EXPECT_CLOSE(twice.bias, 2 * once.bias, 1e-13);
}

TEST(LinearBackward, ThreadsGiveTheSerialResult) {
  Rng rng(24);
  const Linear<double> linear = random_linear(40, 70, true, rng);
  Matrix<double> x(130, 40), dy(130, 70);
  init::normal(x, rng);
  init::normal(dy, rng);
  Linear<double> serial = zeros_like(linear), threaded = zeros_like(linear);
  const Matrix<double> dx = linear.backward(x, dy, serial, ParallelOptions{1});
  ATTNLENS_EXPECT_CLOSE(linear.backward(x, dy, threaded, ParallelOptions{2}), dx, 1e-12);
  ATTNLENS_EXPECT_CLOSE(threaded.weight, serial.weight, 1e-12);
  ATTNLENS_EXPECT_CLOSE(threaded.bias, serial.bias, 1e-12);
  ATTNLENS_EXPECT_CLOSE(serial.weight, dy.transpose() * x, 1e-12);
  ATTNLENS_EXPECT_CLOSE(dx, dy * linear.weight, 1e-12);
}

template <class T>
void check_linear_backward_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers_grad");
  const int checked =
      testing::for_each_case(file, "linear", [&](const auto& c, const auto& prefix) {
        Linear<T> linear(LinearOptions{c["in_features"], c["out_features"], c["bias"]});
        io::load_parameters(file, prefix, linear);
        const Tensor<T> x = file.get<T>(prefix + "input"), dy = file.get<T>(prefix + "grad_output");
        Linear<T> gradient = zeros_like(linear);
        const Matrix<T> dx =
            linear.backward(testing::token_rows(x), testing::token_rows(dy), gradient);
        testing::expect_gradients_match(file, prefix,
                                        Tensor<T>::from_matrix(dx).reshaped(x.shape()), gradient);
      });
  EXPECT_EQ(checked, 2);
}

TEST(LinearBackward, MatchesPyTorchAutogradFloat) {
  check_linear_backward_against_pytorch<float>();
}
TEST(LinearBackward, MatchesPyTorchAutogradDouble) {
  check_linear_backward_against_pytorch<double>();
}

TEST(LinearBackward, BadShapesNameTheArgument) {
  const Linear<float> linear(LinearOptions{3, 2, true});
  Linear<float> gradient = zeros_like(linear);
  const Matrix<float> x = Matrix<float>::Zero(4, 3), dy = Matrix<float>::Zero(4, 2);
  expect_error_naming<ShapeError>([&] { linear.backward(Matrix<float>(4, 2), dy, gradient); },
                                  "Linear backward x: expected 3 columns, got 2");
  expect_error_naming<ShapeError>([&] { linear.backward(x, Matrix<float>(5, 2), gradient); },
                                  "Linear backward dy: expected 4 x 2, got 5 x 2");
  Linear<float> wide(LinearOptions{4, 2, true});
  expect_error_naming<ShapeError>([&] { linear.backward(x, dy, wide); },
                                  "Linear backward gradient.weight: expected 2 x 3, got 2 x 4");
  Linear<float> unbiased(LinearOptions{3, 2, false});
  expect_error_naming<ShapeError>([&] { linear.backward(x, dy, unbiased); },
                                  "Linear backward gradient.bias: expected [2], got [0]");
}

}  // namespace
}  // namespace attnlens
