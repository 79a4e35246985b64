// TransformerEncoder against torch.nn.TransformerEncoder (and, for the fidelity residual, the
// formula written out in PyTorch): small stacks with stored parameters and per-layer maps, and
// the 6-layer E=256, H=8, FF=1024, L=128 encoder whose parameters both sides compute from
// hashed_parameter (tests/support/hashed_parameters.hpp). Plus properties and bad options.
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/io/encoder_state_dict.hpp"
#include "support/blocks.hpp"
#include "support/hashed_parameters.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;
using testing::random_tensor;

template <class T>
void check_small_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("encoder");
  const double tol = testing::default_tolerance<T>();
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    TransformerEncoder<T> encoder(testing::encoder_options(c));
    io::load_parameters(file, prefix, encoder);
    const auto result =
        encoder.forward(file.get<T>(prefix + "src"), testing::encoder_mask<T>(file, prefix, c),
                        {AttentionWeights::per_head, {}});
    ATTNLENS_EXPECT_CLOSE(result.output, file.get<T>(prefix + "output"), tol);
    ASSERT_EQ(result.weights.size(), c["num_layers"].template get<std::size_t>());
    for (std::size_t l = 0; l < result.weights.size(); ++l)
      ATTNLENS_EXPECT_CLOSE(result.weights[l], file.get<T>(prefix + "weights." + std::to_string(l)),
                            tol);
  });
  EXPECT_EQ(checked, 3);
}

TEST(TransformerEncoder, MatchesPyTorchFloat) { check_small_against_pytorch<float>(); }
TEST(TransformerEncoder, MatchesPyTorchDouble) { check_small_against_pytorch<double>(); }

// The acceptance bound for the deep encoder: 1e-4 in float, 1e-9 in double.
template <class T>
void check_deep_against_pytorch() {
  const io::SafeTensors file = testing::load_typed_fixture<T>("encoder_deep");
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    TransformerEncoder<T> encoder(testing::encoder_options(c));
    testing::fill_hashed_parameters(encoder);
    const auto result =
        encoder.forward(file.get<T>(prefix + "src"), testing::encoder_mask<T>(file, prefix, c));
    ATTNLENS_EXPECT_CLOSE(result.output, file.get<T>(prefix + "output"), tol);
  });
  EXPECT_EQ(checked, 2);
}

TEST(TransformerEncoder, SixLayersE256MatchPyTorchFloat) { check_deep_against_pytorch<float>(); }
TEST(TransformerEncoder, SixLayersE256MatchPyTorchDouble) { check_deep_against_pytorch<double>(); }

TEST(TransformerEncoder, HashedParametersAgreeWithThePythonFormula) {
  const io::SafeTensors file = testing::load_fixture("encoder_deep_f64.safetensors");
  const auto probe = file.get<double>("hash_probe.layers.3.linear1.weight");
  const auto [center, scale] = testing::hashed_range("layers.3.linear1.weight", 256);
  for (Index k = 0; k < probe.size(); ++k)
    EXPECT_EQ(testing::hashed_value("layers.3.linear1.weight", static_cast<std::uint64_t>(k),
                                    center, scale),
              probe.data()[k]);
  EXPECT_EQ(testing::hashed_range("layers.0.norm2.weight", 1), (std::pair{1.0, 0.2}));
  EXPECT_EQ(testing::hashed_range("norm.weight", 1), (std::pair{1.0, 0.2}));
  EXPECT_EQ(testing::hashed_range("layers.0.self_attn.in_proj_bias", 1), (std::pair{0.0, 0.1}));
}

EncoderOptions small_options(ResidualType residual, std::vector<double> lambda) {
  EncoderOptions o;
  o.layer.d_model = 8;
  o.layer.nhead = 2;
  o.layer.dim_feedforward = 16;
  o.num_layers = 3;
  o.final_norm = true;
  o.residual = {residual, std::move(lambda)};
  return o;
}

TEST(TransformerEncoder, FidelityWithLambdaZeroIsTheStandardResidual) {
  for (bool norm_first : {false, true}) {
    auto standard_options = small_options(ResidualType::standard, {});
    standard_options.layer.norm_first = norm_first;
    Rng rng(31);
    const TransformerEncoder<double> standard(standard_options, rng);
    TransformerEncoder<double> fidelity = standard;
    fidelity.residual = Residual<double>({ResidualType::fidelity, {0.0}}, 3);
    const auto x = random_tensor<double>({2, 5, 8}, rng);
    EXPECT_EQ(fidelity.forward(x).output, standard.forward(x).output);
    fidelity.residual.lambda[1] = 0.5;  // and a nonzero lambda changes the result
    EXPECT_GT(testing::max_abs_error(fidelity.forward(x).output, standard.forward(x).output), 1e-3);
  }
}

TEST(TransformerEncoder, FidelityTermPullsTowardsTheInput) {
  // One post-norm layer: x_1 = layer(x_0) + lambda (x_0 - x_0) = layer(x_0); with two layers
  // x_2 = layer_1(x_1) + lambda_1 (x_0 - x_1).
  Rng rng(32);
  auto options = small_options(ResidualType::fidelity, {0.7, 0.3});
  options.num_layers = 2;
  options.final_norm = false;
  const TransformerEncoder<double> encoder(options, rng);
  const auto x0 = random_tensor<double>({1, 4, 8}, rng);
  const auto x1 = encoder.layers[0].forward(x0).output;
  const auto layer2 = encoder.layers[1].forward(x1).output;
  const Matrix<double> expected = layer2.matrix({0}) + 0.3 * (x0.matrix({0}) - x1.matrix({0}));
  ATTNLENS_EXPECT_CLOSE(encoder.forward(x0).output.matrix({0}), expected, 1e-14);
}

TEST(TransformerEncoder, PermutingTokensPermutesOutputsWithoutPositions) {
  Rng rng(33);
  const TransformerEncoder<double> encoder(small_options(ResidualType::fidelity, {0.4}), rng);
  const auto x = random_tensor<double>({1, 6, 8}, rng);
  const std::vector<Index> perm{5, 3, 1, 0, 2, 4};
  Tensor<double> px({1, 6, 8});
  for (Index i = 0; i < 6; ++i) px.matrix({0}).row(i) = x.matrix({0}).row(perm[i]);
  const auto y = encoder.forward(x).output;
  const auto py = encoder.forward(px).output;
  for (Index i = 0; i < 6; ++i)
    ATTNLENS_EXPECT_CLOSE(py.matrix({0}).row(i), y.matrix({0}).row(perm[i]), 1e-12);
}

TEST(TransformerEncoder, AveragedMapsAreTheMeanOfPerHeadMaps) {
  Rng rng(34);
  const TransformerEncoder<double> encoder(small_options(ResidualType::standard, {}), rng);
  const auto x = random_tensor<double>({2, 5, 8}, rng);
  const auto per_head = encoder.forward(x, {}, {AttentionWeights::per_head, {}});
  const auto averaged = encoder.forward(x, {}, {AttentionWeights::averaged, {}});
  EXPECT_TRUE(encoder.forward(x).weights.empty());
  ASSERT_EQ(per_head.weights.size(), 3u);
  ASSERT_EQ(averaged.weights.size(), 3u);
  for (std::size_t l = 0; l < 3; ++l) {
    const Matrix<double> mean =
        (per_head.weights[l].matrix({1, 0}) + per_head.weights[l].matrix({1, 1})) / 2;
    ATTNLENS_EXPECT_CLOSE(averaged.weights[l].matrix({1}), mean, 1e-15);
  }
}

TEST(TransformerEncoder, CacheHasEveryLayer) {
  Rng rng(35);
  const TransformerEncoder<double> encoder(small_options(ResidualType::standard, {}), rng);
  const auto x = random_tensor<double>({1, 3, 8}, rng);
  EncoderCache<double> cache;
  const auto y = encoder.forward(x, {}, {}, &cache).output;
  ASSERT_EQ(cache.layers.size(), 3u);
  EXPECT_EQ(cache.layers[0].input, x.matrix({0}));
  // The last layer's cached input reproduces what went into the final norm.
  const Tensor<double> last_input = Tensor<double>::from_matrix(cache.layers[2].input);
  // (Within rounding: without a cache the layer may take the fused engine.)
  const auto last_output = encoder.layers[2].forward(last_input).output;
  ATTNLENS_EXPECT_CLOSE(last_output.matrix(), cache.before_norm.matrix({0}), 1e-14);
  EXPECT_EQ(cache.before_norm.shape(), (Shape{1, 3, 8}));
  EXPECT_EQ(encoder.norm->forward(cache.before_norm.matrix({0})), y.matrix({0}));
}

TEST(TransformerEncoder, RelativePositionsGiveEveryLayerItsOwnTables) {
  auto o = small_options(ResidualType::standard, {});
  o.position.type = PositionType::t5;
  o.position.num_buckets = 8;
  o.position.max_distance = 10;
  Rng rng(36);
  const TransformerEncoder<double> encoder(o, rng);
  const auto& t5_0 = encoder.layers[0].position.as<T5RelativeBias<double>>();
  const auto& t5_2 = encoder.layers[2].position.as<T5RelativeBias<double>>();
  EXPECT_NE(&t5_0, &t5_2);
  EXPECT_EQ(t5_0.relative_attention_bias.rows(), 8);
  EXPECT_GT(testing::max_abs_error(t5_0.relative_attention_bias, t5_2.relative_attention_bias),
            0.1);  // initialised independently
  ASSERT_EQ(encoder.layers[1].self_attn.score_terms.size(), 1u);

  // A copy owns its tables: zeroing them changes the copy only.
  const auto x = random_tensor<double>({2, 9, 8}, rng);
  const EncoderForwardOptions maps{AttentionWeights::per_head, {}};
  const auto before = encoder.forward(x, {}, maps).output;
  TransformerEncoder<double> copy = encoder;
  for (auto& layer : copy.layers)
    layer.position.as<T5RelativeBias<double>>().relative_attention_bias.setZero();
  EXPECT_EQ(encoder.forward(x, {}, maps).output.storage(), before.storage());
  auto plain_options = small_options(ResidualType::standard, {});
  TransformerEncoder<double> plain(plain_options);
  plain.layers = copy.layers;
  for (auto& layer : plain.layers) layer.set_position({});
  plain.norm = copy.norm;
  EXPECT_EQ(copy.forward(x, {}, maps).output.storage(),
            plain.forward(x, {}, maps).output.storage());
  EXPECT_TRUE(plain.layers[0].self_attn.score_terms.empty());
  EXPECT_GT(testing::max_abs_error(before, plain.forward(x, {}, maps).output), 1e-3);

  // Assigning a layer re-attaches the assigned tables, not the old ones.
  TransformerEncoder<double> assigned = encoder;
  assigned.layers[0] = copy.layers[0];
  ASSERT_EQ(assigned.layers[0].self_attn.score_terms.size(), 1u);
  EXPECT_EQ(assigned.layers[0].self_attn.score_terms[0].get(),
            static_cast<const ScoreTerm<double>*>(
                &assigned.layers[0].position.as<T5RelativeBias<double>>()));
}

TEST(TransformerEncoder, EachRelativeTypeAttachesWhereItActs) {
  auto o = small_options(ResidualType::standard, {});
  o.num_layers = 1;
  const auto attached = [&](PositionType type) {
    o.position = {};
    o.position.type = type;
    o.position.max_relative_position = 2;
    const TransformerEncoder<float> encoder(o);
    const auto& mha = encoder.layers[0].self_attn;
    return std::vector<std::size_t>{mha.score_terms.size(), mha.value_terms.size(),
                                    mha.query_key_transforms.size()};
  };
  EXPECT_EQ(attached(PositionType::none), (std::vector<std::size_t>{0, 0, 0}));
  EXPECT_EQ(attached(PositionType::sinusoidal), (std::vector<std::size_t>{0, 0, 0}));
  EXPECT_EQ(attached(PositionType::shaw), (std::vector<std::size_t>{1, 1, 0}));
  EXPECT_EQ(attached(PositionType::transformer_xl), (std::vector<std::size_t>{1, 0, 0}));
  EXPECT_EQ(attached(PositionType::t5), (std::vector<std::size_t>{1, 0, 0}));
  EXPECT_EQ(attached(PositionType::alibi), (std::vector<std::size_t>{1, 0, 0}));
  EXPECT_EQ(attached(PositionType::rope), (std::vector<std::size_t>{0, 0, 1}));
}

TEST(TransformerEncoder, AbsolutePositionsAreAddedToTheInput) {
  auto o = small_options(ResidualType::fidelity, {0.3});
  o.position.type = PositionType::learned;
  o.position.max_len = 6;
  Rng rng(37);
  const TransformerEncoder<double> encoder(o, rng);
  ASSERT_EQ(encoder.position.weight.rows(), 6);
  auto plain_options = o;
  plain_options.position = {};
  TransformerEncoder<double> plain(plain_options);
  plain.layers = encoder.layers;
  plain.norm = encoder.norm;
  const auto x = random_tensor<double>({2, 5, 8}, rng);
  Tensor<double> shifted = x;
  for (Index b = 0; b < 2; ++b) shifted.matrix({b}) += encoder.position.weight.topRows(5);
  // x_0 of the fidelity term includes the positions as well.
  ATTNLENS_EXPECT_CLOSE(encoder.forward(x).output, plain.forward(shifted).output, 1e-14);
  expect_error_naming<ShapeError>(
      [&] {
        encoder.forward(random_tensor<double>({1, 7, 8}, rng));
      },
      "position table");

  o.position = {};
  o.position.type = PositionType::sinusoidal;
  const TransformerEncoder<double> sinusoidal(o, rng);
  EXPECT_EQ(sinusoidal.position.weight.size(), 0);
  Tensor<double> with_table = x;
  for (Index b = 0; b < 2; ++b) with_table.matrix({b}) += sinusoidal_encoding<double>(5, 8);
  plain.layers = sinusoidal.layers;
  plain.norm = sinusoidal.norm;
  ATTNLENS_EXPECT_CLOSE(sinusoidal.forward(x).output, plain.forward(with_table).output, 1e-14);
}

TEST(TransformerEncoder, ParametersOfPositionsAndLearnedLambdaAreNamed) {
  auto o = small_options(ResidualType::fidelity, {});
  o.residual.learned = true;
  o.position.type = PositionType::transformer_xl;
  TransformerEncoder<float> encoder(o);
  std::map<std::string, Shape> names;
  for_each_parameter(encoder, "", [&](const std::string& name, auto& p, const Shape& = {}) {
    names[name] = {p.rows(), p.cols()};
  });
  EXPECT_EQ(names.at("layers.2.self_attn.r_w_bias"), (Shape{2, 4}));
  EXPECT_EQ(names.at("layers.0.self_attn.r_r_bias"), (Shape{2, 4}));
  EXPECT_EQ(names.at("layers.1.self_attn.r_net.weight"), (Shape{8, 8}));
  EXPECT_EQ(names.at("fidelity_lambda"), (Shape{3, 1}));
  EXPECT_EQ(names.size(), 3 * (12 + 3) + 2 + 1u);
  EXPECT_EQ(encoder.residual.lambda, Vector<float>::Zero(3));

  o.position = {};
  o.position.type = PositionType::learned;
  o.position.max_len = 4;
  TransformerEncoder<float> learned(o);
  names.clear();
  for_each_parameter(learned, "", [&](const std::string& name, auto& p, const Shape& = {}) {
    names[name] = {p.rows(), p.cols()};
  });
  EXPECT_EQ(names.at("position_embeddings.weight"), (Shape{4, 8}));
}

TEST(TransformerEncoder, LearnedLambdaIsTheParameterTheStackUses) {
  auto o = small_options(ResidualType::fidelity, {});
  o.residual.learned = true;
  Rng rng(38);
  TransformerEncoder<double> encoder(o, rng);
  const auto x = random_tensor<double>({1, 4, 8}, rng);
  const auto standard = encoder.forward(x).output;
  for_each_parameter(encoder, "", [&](const std::string& name, auto& p, const Shape& = {}) {
    if (name == "fidelity_lambda") p.setConstant(0.4);
  });
  TransformerEncoder<double> fixed = encoder;
  fixed.residual = Residual<double>({ResidualType::fidelity, {0.4}}, 3);
  EXPECT_EQ(encoder.forward(x).output.storage(), fixed.forward(x).output.storage());
  EXPECT_GT(testing::max_abs_error(encoder.forward(x).output, standard), 1e-3);
}

TEST(TransformerEncoder, BadOptionsNameTheArgument) {
  auto o = small_options(ResidualType::standard, {});
  o.num_layers = 0;
  expect_error_naming<ArgumentError>([&] { TransformerEncoder<float> e(o); },
                                     "EncoderOptions::num_layers");
  expect_error_naming<ArgumentError>(
      [&] {
        TransformerEncoder<float> e(small_options(ResidualType::fidelity, {0.1, 0.2}));
      },
      "ResidualOptions::lambda");
  expect_error_naming<ArgumentError>(
      [&] { TransformerEncoder<float> e(small_options(ResidualType::fidelity, {})); },
      "ResidualOptions::lambda");
  expect_error_naming<ArgumentError>(
      [&] { TransformerEncoder<float> e(small_options(ResidualType::standard, {0.5})); },
      "ResidualOptions::lambda");
  expect_error_naming<ArgumentError>(
      [&] {
        TransformerEncoder<float> e(small_options(ResidualType::fidelity, {0.1, NAN, 0.2}));
      },
      "ResidualOptions::lambda[1]");
  expect_error_naming<ArgumentError>([] { residual_type_from_name("boosted"); }, "residual.type");
  o = small_options(ResidualType::standard, {});
  o.position.type = PositionType::quadratic;
  expect_error_naming<ArgumentError>([&] { TransformerEncoder<float> e(o); },
                                     "EncoderOptions::position.type");
  o.position.type = PositionType::learned;  // max_len 0
  expect_error_naming<ArgumentError>([&] { TransformerEncoder<float> e(o); },
                                     "PositionOptions::max_len");
  o.position = {};
  o.position.type = PositionType::t5;
  o.position.num_buckets = 2;
  expect_error_naming<ArgumentError>([&] { TransformerEncoder<float> e(o); },
                                     "T5BiasOptions::num_buckets");
  o.position = {};
  o.position.type = PositionType::shaw;
  o.position.max_relative_position = -1;
  expect_error_naming<ArgumentError>([&] { TransformerEncoder<float> e(o); },
                                     "ShawOptions::max_relative_position");
}

}  // namespace
}  // namespace attnlens
