// FeedForward against the feed-forward half of torch.nn.TransformerEncoderLayer (linear1,
// activation, linear2; fixtures from tests/reference/oracles/blocks.py), and bad input.
#include <gtest/gtest.h>

#include <string>

#include "attnlens/io/encoder_state_dict.hpp"
#include "attnlens/layers/feed_forward.hpp"
#include "support/blocks.hpp"

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

}  // namespace
}  // namespace attnlens
