// Shaw et al.'s relative keys and values against the PyTorch oracle, as a score term plus a
// value term inside the reference engine, tile by tile for the value term too.
#include <gtest/gtest.h>

#include <limits>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/position/shaw.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

template <class T>
class ShawTest : public ::testing::Test {};
TYPED_TEST_SUITE(ShawTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(ShawTest, EngineWithShawTermsMatchesOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = testing::default_tolerance<T>();
  auto shaw = std::make_shared<ShawRelativePosition<T>>(ShawOptions{4, 3});
  shaw->relative_keys = file.get<T>("shaw.relative_keys").matrix();
  shaw->relative_values = file.get<T>("shaw.relative_values").matrix();
  const ScoreTerms<T> terms{shaw};
  const ValueTerms<T> value_terms{shaw};
  const Tensor<T> q = file.get<T>("shaw.queries"), k = file.get<T>("shaw.keys"),
                  v = file.get<T>("shaw.values");
  const ScoreShape shape{1, 2, 9, 11, 4};
  shaw->check(shape);
  shaw->check(shape, 4);
  const AttentionKernel<T> kernel{dot_product_range(T(0.5)), &terms, nullptr, &value_terms};
  Tensor<T> weights({2, 9, 11}), out({2, 9, 4});
  for (Index h = 0; h < 2; ++h)
    reference_attention<T>({0, h, q.matrix({h}), k.matrix({h}), v.matrix({h})}, kernel,
                           weights.matrix({h}), out.matrix({h}));
  ATTNLENS_EXPECT_CLOSE(weights, file.get<T>("shaw.weights"), tol);
  ATTNLENS_EXPECT_CLOSE(out, file.get<T>("shaw.output"), tol);

  // The value term is linear in the weights: tiles of columns add up to the whole.
  Tensor<T> tiled({2, 9, 4});
  for (Index h = 0; h < 2; ++h) {
    tiled.matrix({h}) = weights.matrix({h}) * v.matrix({h});
    for (Index j0 = 0; j0 < 11; j0 += 4) {
      const Index cols = std::min<Index>(4, 11 - j0);
      for (Index i0 = 0; i0 < 9; i0 += 5) {
        const Index rows = std::min<Index>(5, 9 - i0);
        shaw->add(TileCoords{0, h, i0, j0}, weights.matrix({h}).block(i0, j0, rows, cols),
                  tiled.matrix({h}).middleRows(i0, rows));
      }
    }
  }
  ATTNLENS_EXPECT_CLOSE(tiled, file.get<T>("shaw.output"), tol);
}

TEST(Shaw, InsideMultiHeadAttentionTheTablesMatter) {
  Rng rng(8);
  MultiHeadAttention<double> mha({8, 2}, rng);
  Tensor<double> x({1, 6, 8});
  for (auto& v : x.storage()) v = rng.normal<double>();
  const auto plain = mha.forward(x).output;
  auto shaw = std::make_shared<ShawRelativePosition<double>>(ShawOptions{4, 2});
  mha.score_terms.push_back(shaw);
  mha.value_terms.push_back(shaw);
  EXPECT_EQ(mha.forward(x).output, plain);  // zero tables: plain attention
  shaw->reset_parameters(rng);
  EXPECT_GT(testing::max_abs_error(mha.forward(x).output, plain), 1e-3);
}

TEST(Shaw, BadShapesNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { ShawRelativePosition<float>({0, 2}); }, "head_dim");
  expect_error_naming<ArgumentError>(
      [] {
        ShawRelativePosition<float>({4, -1});
      },
      "max_relative_position");
  // 2k + 1 rows overflowed into a small table.
  for (const Index k :
       {std::numeric_limits<Index>::max(), std::numeric_limits<Index>::max() / 2 + 1})
    expect_error_naming<ArgumentError>(
        [k] {
          ShawRelativePosition<float>({4, k});
        },
        "ShawOptions::max_relative_position");
  Rng rng(1);
  MultiHeadAttention<float> mha({12, 2}, rng);  // heads of width 6, tables of width 4
  auto shaw = std::make_shared<ShawRelativePosition<float>>(ShawOptions{4, 2});
  mha.value_terms.push_back(shaw);
  expect_error_naming<ShapeError>(
      [&] {
        (void)mha.forward(Tensor<float>({1, 3, 12}));
      },
      "relative_values");
  mha.score_terms.push_back(shaw);
  expect_error_naming<ShapeError>(
      [&] {
        (void)mha.forward(Tensor<float>({1, 3, 12}));
      },
      "relative_keys");
}

}  // namespace
}  // namespace attnlens
