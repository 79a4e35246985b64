// FeedForward against the feed-forward half of torch.nn.TransformerEncoderLayer (linear1,
// activation, linear2; fixtures from tests/reference/oracles/blocks.py), its backward pass
// against central differences and PyTorch autograd (oracles/layers.py), and bad input.
#include <gtest/gtest.h>

#include <string>

#include "attnlens/io/encoder_state_dict.hpp"
#include "attnlens/layers/feed_forward.hpp"
#include "support/blocks.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T>
void check_feed_forward_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers");
  const int checked =
      testing::for_each_case(file, "feed_forward", [&](const auto& c, const auto& prefix) {
        FeedForward<T> ff(
            {c["d_model"], c["dim_feedforward"], activation_from_name(c["activation"])});
        EXPECT_EQ(io::load_parameters(file, prefix, ff).size(), 4u);
        const Tensor<T> x = file.get<T>(prefix + "input");
        ATTNLENS_EXPECT_CLOSE(testing::apply_to_rows(ff, x, ff.d_model()),
                              file.get<T>(prefix + "output"), testing::default_tolerance<T>());
      });
  EXPECT_EQ(checked, 3);
}

TEST(FeedForward, MatchesPyTorchFloat) { check_feed_forward_against_pytorch<float>(); }
TEST(FeedForward, MatchesPyTorchDouble) { check_feed_forward_against_pytorch<double>(); }

TEST(FeedForward, CacheHoldsTheHiddenLayer) {
  Rng rng(3);
  const FeedForward<double> ff({4, 6, Activation::gelu}, rng);
  Matrix<double> x(3, 4);
  init::normal(x, rng);
  FeedForwardCache<double> cache;
  const Matrix<double> y = ff.forward(x, &cache);
  EXPECT_EQ(cache.pre_activation, ff.linear1.forward(x));
  Matrix<double> hidden = cache.pre_activation;
  apply_activation<double>(Activation::gelu, hidden);
  EXPECT_EQ(cache.hidden, hidden);
  EXPECT_EQ(y, ff.linear2.forward(hidden));
  EXPECT_EQ(y, ff.forward(x));
}

TEST(FeedForward, WithoutBias) {
  Rng rng(4);
  FeedForward<float> ff({4, 8, Activation::relu, false}, rng);
  int parameters = 0;
  for_each_parameter(ff, "", [&](const std::string&, auto&) { ++parameters; });
  EXPECT_EQ(parameters, 2);
  // Without biases ReLU's network is positively homogeneous: f(2x) = 2 f(x).
  Matrix<float> x(2, 4);
  init::normal(x, rng);
  ATTNLENS_EXPECT_CLOSE(ff.forward(2 * x), 2 * ff.forward(x), 1e-5f);
}

TEST(FeedForward, BadOptionsAndShapesNameTheArgument) {
  expect_error_naming<ArgumentError>([] { FeedForward<float>({0, 8}); }, "d_model");
  expect_error_naming<ArgumentError>([] { FeedForward<float>({4, 0}); }, "dim_feedforward");
  const FeedForward<float> ff({4, 8});
  expect_error_naming<ShapeError>([&] { ff.forward(Matrix<float>(2, 5)); }, "Linear input");
}

TEST(FeedForwardBackward, EqualsCentralDifferencesForEachActivation) {
  for (const Activation a : {Activation::relu, Activation::gelu, Activation::gelu_tanh}) {
    SCOPED_TRACE(activation_name(a));
    Rng rng(61);
    FeedForward<double> ff({5, 8, a}, rng);
    for (Linear<double>* linear : {&ff.linear1, &ff.linear2}) init::normal(linear->bias, rng);
    Matrix<double> x(4, 5);
    init::normal(x, rng);
    FeedForwardCache<double> cache;
    const Matrix<double> probe = testing::random_probe(4, 5, 62);
    const auto loss = [&] { return (ff.forward(x).array() * probe.array()).sum(); };
    ff.forward(x, &cache);
    // Steps of 1e-5 keep every relu input on its side of 0: the differences are valid.
    ASSERT_GT(cache.pre_activation.cwiseAbs().minCoeff(), 1e-3);
    FeedForward<double> gradient = zeros_like(ff);
    Matrix<double> dx = ff.backward(x, cache, probe, gradient);
    ATTNLENS_EXPECT_GRADIENT(loss, x.data(), x.size(), dx.data(), 1e-6);
    testing::expect_parameter_gradients(ff, gradient, loss);
  }
}

// Through the free function, as TransformerEncoderLayer calls it.
template <class T>
void check_feed_forward_backward_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("layers_grad");
  const int checked =
      testing::for_each_case(file, "feed_forward", [&](const auto& c, const auto& prefix) {
        FeedForward<T> ff(
            {c["d_model"], c["dim_feedforward"], activation_from_name(c["activation"])});
        io::load_parameters(file, prefix, ff);
        const Tensor<T> x = file.get<T>(prefix + "input"), dy = file.get<T>(prefix + "grad_output");
        FeedForwardCache<T> cache;
        ff.forward(testing::token_rows(x), &cache);
        FeedForward<T> gradient = zeros_like(ff);
        const Matrix<T> dx = feed_forward_backward<T>(
            ff.linear1, ff.activation, ff.linear2, testing::token_rows(x), cache,
            testing::token_rows(dy), gradient.linear1, gradient.linear2);
        testing::expect_gradients_match(file, prefix,
                                        Tensor<T>::from_matrix(dx).reshaped(x.shape()), gradient);
      });
  EXPECT_EQ(checked, 3);
}

TEST(FeedForwardBackward, MatchesPyTorchAutogradFloat) {
  check_feed_forward_backward_against_pytorch<float>();
}
TEST(FeedForwardBackward, MatchesPyTorchAutogradDouble) {
  check_feed_forward_backward_against_pytorch<double>();
}

TEST(FeedForwardBackward, BadShapesNameTheArgument) {
  Rng rng(63);
  const FeedForward<float> ff({4, 8}, rng);
  FeedForward<float> gradient = zeros_like(ff);
  const Matrix<float> x = Matrix<float>::Random(3, 4), dy = Matrix<float>::Zero(3, 4);
  FeedForwardCache<float> cache;
  ff.forward(x, &cache);
  expect_error_naming<ShapeError>([&] { ff.backward(Matrix<float>(3, 5), cache, dy, gradient); },
                                  "feed_forward_backward x: expected 3 x 4, got 3 x 5");
  expect_error_naming<ShapeError>([&] { ff.backward(x, cache, Matrix<float>(3, 5), gradient); },
                                  "feed_forward_backward dy: expected 3 x 4, got 3 x 5");
  expect_error_naming<ShapeError>([&] { ff.backward(x.topRows(2), cache, dy, gradient); },
                                  "feed_forward_backward cache.pre_activation: expected 2 x 8");
  FeedForwardCache<float> stale = cache;
  stale.hidden.resize(2, 8);
  expect_error_naming<ShapeError>([&] { ff.backward(x, stale, dy, gradient); },
                                  "feed_forward_backward cache.hidden: expected 3 x 8, got 2 x 8");
}

}  // namespace
}  // namespace attnlens
