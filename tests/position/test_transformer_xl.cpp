// Transformer-XL's relative terms (u, v, W_R, sinusoidal R) against the PyTorch oracle.
#include <gtest/gtest.h>

#include "attnlens/position/transformer_xl.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

template <class T>
class TransformerXlTest : public ::testing::Test {};
TYPED_TEST_SUITE(TransformerXlTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(TransformerXlTest, MatchesOracleTileByTile) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  TransformerXlRelativePosition<T> term({2, 4, 6});
  term.r_w_bias = file.get<T>("transformer_xl.r_w_bias").matrix();
  term.r_r_bias = file.get<T>("transformer_xl.r_r_bias").matrix();
  term.r_net.weight = file.get<T>("transformer_xl.r_net.weight").matrix();
  const Tensor<T> q = file.get<T>("transformer_xl.queries"), k = file.get<T>("transformer_xl.keys");
  term.check({1, 2, 7, 9, 4});
  Tensor<T> bias({2, 7, 9});
  for (Index h = 0; h < 2; ++h) {
    const Matrix<T> qh = q.matrix({h}), kh = k.matrix({h});
    const Tensor<T> one = testing::term_bias<T>(term, 2, 7, 9, 3, 4, &qh, &kh, h);
    bias.matrix({h}) = one.matrix({h});
  }
  ATTNLENS_EXPECT_CLOSE(bias, file.get<T>("transformer_xl.bias"), testing::default_tolerance<T>());
}

TEST(TransformerXl, BadShapesNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>(
      [] {
        TransformerXlRelativePosition<float>({2, 4, 5});
      },
      "d_model");
  expect_error_naming<ArgumentError>(
      [] {
        TransformerXlRelativePosition<float>({0, 4, 6});
      },
      "num_heads");
  const TransformerXlRelativePosition<float> term({2, 4, 6});
  expect_error_naming<ShapeError>([&] { term.check({1, 3, 5, 5, 4}); }, "r_w_bias");
  expect_error_naming<ShapeError>([&] { term.check({1, 2, 5, 5, 3}); }, "r_w_bias");
}

}  // namespace
}  // namespace attnlens
