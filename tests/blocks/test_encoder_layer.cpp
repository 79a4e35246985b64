// TransformerEncoderLayer against torch.nn.TransformerEncoderLayer(batch_first=True) (fixtures
// from tests/reference/oracles/blocks.py: both norm_first, relu / gelu / tanh-gelu, with and
// without src_mask and src_key_padding_mask), plus properties and bad input.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "attnlens/blocks/encoder_layer.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;
using testing::random_tensor;

template <class T>
void check_encoder_layer_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("encoder_layer");
  const double tol = testing::default_tolerance<T>();
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    TransformerEncoderLayer<T> layer(testing::layer_options(c));
    EXPECT_EQ(io::load_parameters(file, prefix, layer).size(), 12u);
    const auto mask = testing::encoder_mask<T>(file, prefix, c);
    const auto result =
        layer.forward(file.get<T>(prefix + "src"), mask, {AttentionWeights::per_head, {}});
    ATTNLENS_EXPECT_CLOSE(result.output, file.get<T>(prefix + "output"), tol);
    ATTNLENS_EXPECT_CLOSE(result.weights, file.get<T>(prefix + "weights"), tol);
  });
  EXPECT_EQ(checked, 7);
}

TEST(TransformerEncoderLayer, MatchesPyTorchFloat) { check_encoder_layer_against_pytorch<float>(); }
TEST(TransformerEncoderLayer, MatchesPyTorchDouble) {
  check_encoder_layer_against_pytorch<double>();
}

EncoderLayerOptions small_options(bool norm_first) {
  EncoderLayerOptions o;
  o.d_model = 12;
  o.nhead = 3;
  o.dim_feedforward = 20;
  o.activation = Activation::gelu;
  o.norm_first = norm_first;
  return o;
}

TEST(TransformerEncoderLayer, PermutingTokensPermutesOutputs) {
  for (bool norm_first : {false, true}) {
    Rng rng(21);
    const TransformerEncoderLayer<double> layer(small_options(norm_first), rng);
    const auto x = random_tensor<double>({1, 6, 12}, rng);
    const std::vector<Index> perm{4, 2, 0, 5, 1, 3};
    Tensor<double> px({1, 6, 12});
    for (Index i = 0; i < 6; ++i) px.matrix({0}).row(i) = x.matrix({0}).row(perm[i]);
    const auto y = layer.forward(x).output;
    const auto py = layer.forward(px).output;
    for (Index i = 0; i < 6; ++i)
      ATTNLENS_EXPECT_CLOSE(py.matrix({0}).row(i), y.matrix({0}).row(perm[i]), 1e-12);
  }
}

TEST(TransformerEncoderLayer, UnbatchedInputEqualsBatchOfOne) {
  Rng rng(22);
  const TransformerEncoderLayer<double> layer(small_options(true), rng);
  const auto x = random_tensor<double>({5, 12}, rng);
  const auto unbatched = layer.forward(x, {}, {AttentionWeights::averaged, {}});
  const auto batched = layer.forward(x.reshaped({1, 5, 12}), {}, {AttentionWeights::averaged, {}});
  EXPECT_EQ(unbatched.output.shape(), (Shape{5, 12}));
  EXPECT_EQ(unbatched.weights.shape(), (Shape{5, 5}));
  EXPECT_EQ(unbatched.output.storage(), batched.output.storage());
}

TEST(TransformerEncoderLayer, CacheHoldsTheIntermediateStates) {
  for (bool norm_first : {false, true}) {
    Rng rng(23);
    const TransformerEncoderLayer<double> layer(small_options(norm_first), rng);
    const auto x = random_tensor<double>({2, 4, 12}, rng);
    EncoderLayerCache<double> cache;
    const auto y = layer.forward(x, {}, {}, &cache).output;
    EXPECT_EQ(cache.input, x.reshaped({8, 12}).matrix());
    // The output is rebuilt from the hidden state with the feed-forward block alone.
    const Matrix<double> ff_in = norm_first ? layer.norm2.forward(cache.hidden) : cache.hidden;
    Matrix<double> rebuilt = cache.hidden + layer.linear2.forward(cache.feed_forward.hidden);
    if (!norm_first) rebuilt = layer.norm2.forward(rebuilt);
    ATTNLENS_EXPECT_CLOSE(rebuilt, y.reshaped({8, 12}).matrix(), 1e-13);
    ATTNLENS_EXPECT_CLOSE(cache.feed_forward.pre_activation, layer.linear1.forward(ff_in), 1e-13);
    EXPECT_EQ(cache.self_attn.weights.shape(), (Shape{2, 3, 4, 4}));
  }
}

TEST(TransformerEncoderLayer, BadOptionsNameTheArgument) {
  const auto expect = [](EncoderLayerOptions o, const std::string& word) {
    expect_error_naming<ArgumentError>([&] { TransformerEncoderLayer<float> layer(o); }, word);
  };
  auto o = small_options(false);
  o.d_model = 0;
  expect(o, "EncoderLayerOptions::d_model");
  o = small_options(false);
  o.nhead = 5;
  expect(o, "EncoderLayerOptions::nhead");
  o = small_options(false);
  o.dim_feedforward = -1;
  expect(o, "EncoderLayerOptions::dim_feedforward");
  o = small_options(false);
  o.layer_norm_eps = 0;
  expect(o, "EncoderLayerOptions::layer_norm_eps");
}

TEST(TransformerEncoderLayer, BadInputNamesTheArgument) {
  Rng rng(24);
  const TransformerEncoderLayer<float> layer(small_options(false), rng);
  expect_error_naming<ShapeError>([&] { layer.forward(Tensor<float>({2, 4, 10})); }, "src");
  expect_error_naming<ShapeError>([&] { layer.forward(Tensor<float>({2, 0, 12})); }, "src");
  expect_error_naming<ShapeError>([&] { layer.forward(Tensor<float>({1, 2, 4, 12})); }, "src");
  AttentionMask<float> mask;
  mask.key_keep = Tensor<std::uint8_t>({2, 5});
  expect_error_naming<ShapeError>(
      [&] {
        layer.forward(Tensor<float>({2, 4, 12}), mask);
      },
      "mask.key_keep");
}

TEST(TransformerEncoderLayer, LoadingNamesMissingAndMisshapenTensors) {
  const io::SafeTensors file = testing::load_fixture("encoder_layer_f32.safetensors");
  TransformerEncoderLayer<float> layer(small_options(false));
  // el00 has d_model 16, not 12: the first tensor read has the wrong shape.
  expect_error_naming<ShapeError>([&] { io::load_parameters(file, "el00_post_relu.", layer); },
                                  "el00_post_relu.self_attn.in_proj_weight");
  expect_error_naming<IoError>([&] { io::load_parameters(file, "nope.", layer); },
                               "nope.self_attn.in_proj_weight");
}

}  // namespace
}  // namespace attnlens
