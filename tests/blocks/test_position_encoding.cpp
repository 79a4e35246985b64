// PositionOptions, RelativePosition and AbsolutePosition (blocks/position_encoding.hpp): names,
// which list of a MultiHeadAttention each relative type joins, deep copies, and bad options.
// (Their numbers inside encoders and the vision transformer are checked against PyTorch in
// test_encoder.cpp, test_vision_transformer.cpp and tests/io/test_model.cpp.)
#include <gtest/gtest.h>

#include <cmath>
#include <memory>

#include "attnlens/blocks/position_encoding.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

TEST(PositionEncoding, NamesRoundTripAndUnknownNamesListTheKnownOnes) {
  for (PositionType t : k_position_types)
    EXPECT_EQ(position_type_from_name(position_type_name(t)), t);
  expect_error_naming<ArgumentError>([] { position_type_from_name("xpos", "config.position"); },
                                     "config.position: expected one of \"none\", \"sinusoidal\"");
  EXPECT_TRUE(is_absolute(PositionType::learned));
  EXPECT_TRUE(is_relative(PositionType::rope));
  EXPECT_FALSE(is_relative(PositionType::none));
  EXPECT_TRUE(is_two_dimensional(PositionType::learned_2d));
  EXPECT_FALSE(is_two_dimensional(PositionType::t5));
}

TEST(PositionEncoding, AttachAndDetachTouchOnlyTheirOwnTerm) {
  MultiHeadAttention<double> mha(MultiHeadAttentionOptions{8, 2});
  const auto other = std::make_shared<Alibi<double>>(AlibiOptions{2});
  mha.score_terms.push_back(other);
  PositionOptions o;
  o.type = PositionType::shaw;
  o.max_relative_position = 3;
  const RelativePosition<double> shaw(o, 8, 2);
  EXPECT_EQ(shaw.as<ShawRelativePosition<double>>().relative_keys.rows(), 7);
  EXPECT_EQ(shaw.as<ShawRelativePosition<double>>().relative_keys.cols(), 4);
  shaw.attach(mha);
  ASSERT_EQ(mha.score_terms.size(), 2u);
  ASSERT_EQ(mha.value_terms.size(), 1u);
  const RelativePosition<double> copy = shaw;  // deep: another object
  EXPECT_NE(&copy.as<ShawRelativePosition<double>>(), &shaw.as<ShawRelativePosition<double>>());
  copy.detach(mha);  // not attached: nothing to remove
  EXPECT_EQ(mha.score_terms.size(), 2u);
  shaw.detach(mha);
  ASSERT_EQ(mha.score_terms.size(), 1u);
  EXPECT_EQ(mha.score_terms[0].get(), other.get());
  EXPECT_TRUE(mha.value_terms.empty());
  expect_error_naming<ArgumentError>([&] { shaw.as<T5RelativeBias<double>>(); }, "shaw");
}

TEST(PositionEncoding, RopeUsesTheOptionsPairingAndBase) {
  PositionOptions o;
  o.type = PositionType::rope;
  o.base = 500.0;
  o.pairing = RopePairing::half;
  const RelativePosition<float> rope(o, 12, 3);
  const auto& transform = rope.as<RotaryEmbedding<float>>();
  EXPECT_EQ(transform.options().head_dim, 4);
  EXPECT_EQ(transform.options().base, 500.0);
  EXPECT_EQ(transform.options().pairing, RopePairing::half);
}

TEST(PositionEncoding, SinusoidalAbsoluteAddsVaswanisTable) {
  PositionOptions o;
  o.type = PositionType::sinusoidal;
  const AbsolutePosition<double> position(o, 6);
  Tensor<double> x({2, 4, 6});
  position.add_to(x);
  const Matrix<double> table = sinusoidal_encoding<double>(4, 6);
  EXPECT_EQ(Matrix<double>(x.matrix({1})), table);
  EXPECT_EQ(x.data()[2 * 6 + 1], std::cos(2.0));  // PE(2, 1) = cos(2 / 10000^0)
}

TEST(PositionEncoding, BadOptionsNameTheArgument) {
  PositionOptions o;
  o.type = PositionType::learned;
  expect_error_naming<ArgumentError>([&] { RelativePosition<float>(o, 8, 2); },
                                     "relative position type");
  o.type = PositionType::t5;
  expect_error_naming<ArgumentError>([&] { AbsolutePosition<float>(o, 8); },
                                     "absolute position type");
  expect_error_naming<ArgumentError>([&] { RelativePosition<float>(o, 8, 3); },
                                     "relative position d_model");
  o.type = PositionType::sinusoidal;
  expect_error_naming<ArgumentError>([&] { AbsolutePosition<float>(o, 7); }, "embed_dim");
  o.type = PositionType::rope;
  expect_error_naming<ArgumentError>([&] { RelativePosition<float>(o, 6, 2); },
                                     "RopeOptions::head_dim");
  o.type = PositionType::quadratic;  // no grid
  expect_error_naming<ArgumentError>([&] { RelativePosition<float>(o, 8, 2); }, "query grid");
}

}  // namespace
}  // namespace attnlens
