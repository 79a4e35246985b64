// The quadratic 2-D encoding of Cordonnier et al. (isotropic and generalized) against the
// PyTorch oracle, on a grid after a CLS token and between a query grid and a padded key grid;
// the concentration property and 2-D translation equivariance.
#include <gtest/gtest.h>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/registry.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

using testing::term_bias;

template <class T>
class QuadraticTest : public ::testing::Test {};
TYPED_TEST_SUITE(QuadraticTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(QuadraticTest, IsotropicMatchesOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  // Scores grow like alpha |delta|^2 ~ 100: float keeps ~1e-5 relative of that.
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  QuadraticEncoding<T> self({4, {5, 6, 1}});
  self.alpha = Eigen::Map<const Vector<T>>(file.get<T>("quadratic.alpha").data(), 4);
  self.center_shift = file.get<T>("quadratic.center_shift").matrix();
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(self, 4, 31, 31), file.get<T>("quadratic.bias"), tol);
  QuadraticEncoding<T> cross({4, {4, 4}, Grid2d{6, 6, 0, -1, -1}});
  cross.alpha = self.alpha;
  cross.center_shift = self.center_shift;
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(cross, 4, 16, 36, 5, 7), file.get<T>("quadratic.cross_bias"),
                        tol);
}

TYPED_TEST(QuadraticTest, GeneralizedMatchesOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
  GeneralizedQuadraticEncoding<T> term({4, {5, 6, 1}});
  term.center_shift = file.get<T>("quadratic_general.center_shift").matrix();
  term.inverse_covariance = file.get<T>("quadratic_general.inverse_covariance").matrix();
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(term, 4, 31, 31), file.get<T>("quadratic_general.bias"), tol);
}

// The two initialisations: unit (alpha 1, centres N(0, 1)) and attention-cnn's
// (GaussianSelfAttention, isotropic: centres N(0, 2^2), inverse std s ~ N(1, 0.01^2), which is
// alpha = s^2 / 2 in the score -alpha (|delta - Delta|^2 - |Delta|^2)). Moments over 20,000 heads.
TEST(Quadratic, InitialisationsDrawTheirDistributions) {
  const Index heads = 20000;
  QuadraticEncoding<double> unit({heads, {3, 3}});
  QuadraticEncodingOptions cnn_options{heads, {3, 3}};
  cnn_options.init = QuadraticInit::attention_cnn;
  QuadraticEncoding<double> cnn(cnn_options);
  Rng rng(3);
  unit.reset_parameters(rng);
  cnn.reset_parameters(rng);
  const auto std_of = [](const auto& v) {
    return std::sqrt((v.array() - v.mean()).square().mean());
  };
  EXPECT_TRUE((unit.alpha.array() == 1.0).all());
  EXPECT_NEAR(std_of(unit.center_shift.reshaped()), 1.0, 0.02);
  EXPECT_NEAR(cnn.center_shift.mean(), 0.0, 0.04);
  EXPECT_NEAR(std_of(cnn.center_shift.reshaped()), 2.0, 0.04);
  const Vector<double> s = (2 * cnn.alpha.array()).sqrt().matrix();
  EXPECT_NEAR(s.mean(), 1.0, 2e-4);
  EXPECT_NEAR(std_of(s), 0.01, 4e-4);
  // The registry's setting reaches the factory.
  PositionOptions options;
  options.type = PositionType::quadratic;
  options.grid = {3, 3};
  options.extra["init"] = std::string("attention-cnn");
  auto term = position_encoding(PositionType::quadratic).make<double>(options, 8, heads);
  term->reset_parameters(rng);
  EXPECT_NEAR(std_of(dynamic_cast<QuadraticEncoding<double>&>(*term).center_shift.reshaped()),
              2.0, 0.04);
}

TEST(Quadratic, LargeAlphaPutsTheMassOnTheCenterShift) {
  const Grid2d grid{6, 7, 1};
  Rng rng(4);
  MultiHeadAttention<double> mha({8, 2}, rng);
  auto term = std::make_shared<QuadraticEncoding<double>>(QuadraticEncodingOptions{2, grid});
  term->alpha << 8.0, 8.0;
  term->center_shift << 1, -1, 0, 2;
  mha.score_terms.push_back(term);
  Tensor<double> x({1, grid.tokens(), 8});
  for (auto& v : x.storage()) v = rng.normal<double>();
  const auto weights = mha.forward(x, {}, {AttentionWeights::per_head, {}}).weights;
  // Query pixel (2, 3), token 1 + 2*7 + 3; head 0 looks at (3, 2), head 1 at (2, 5).
  const Index query = 1 + 2 * 7 + 3;
  EXPECT_GT(weights.at({0, 0, query, 1 + 3 * 7 + 2}), 0.99);
  EXPECT_GT(weights.at({0, 1, query, 1 + 2 * 7 + 5}), 0.99);
  EXPECT_LT(weights.at({0, 0, query, 0}), 1e-6);  // the CLS key has no position: term 0
}

// Relative-only 2-D attention commutes with translations on interior pixels: shift the image
// by (1, 2) and every interior output moves with it.
TEST(Quadratic, RelativeOnlyAttentionIsTranslationEquivariant) {
  const Index H = 9, W = 10, E = 6;
  Rng rng(6);
  MultiHeadAttention<double> mha({E, 2}, rng);
  auto term = std::make_shared<QuadraticEncoding<double>>(QuadraticEncodingOptions{2, {H, W}});
  term->alpha << 6.0, 5.0;
  term->center_shift << 0.5, -0.5, -1.0, 0.0;
  mha.score_terms.push_back(term);
  Tensor<double> x({1, H * W, E}), shifted({1, H * W, E});
  for (auto& v : x.storage()) v = rng.normal<double>();
  for (Index r = 0; r < H; ++r)
    for (Index c = 0; c < W; ++c)
      shifted.matrix({0}).row(r * W + c) = x.matrix({0}).row(((r + 1) % H) * W + (c + 2) % W);
  const auto y = mha.forward(x).output, ys = mha.forward(shifted).output;
  for (Index r = 3; r < H - 4; ++r)
    for (Index c = 3; c < W - 5; ++c)
      ATTNLENS_EXPECT_CLOSE(ys.matrix({0}).row(r * W + c), y.matrix({0}).row((r + 1) * W + c + 2),
                            1e-10)
          << r << ", " << c;
}

TEST(Quadratic, BadShapesNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { QuadraticEncoding<float>({0, {2, 2}}); }, "num_heads");
  expect_error_naming<ArgumentError>([] { QuadraticEncoding<float>({1, {0, 2}}); }, "query grid");
  expect_error_naming<ArgumentError>(
      [] {
        QuadraticEncoding<float>({1, {2, 2}, Grid2d{2, 2, -1}});
      },
      "key grid.leading");
  QuadraticEncoding<float> term({2, {3, 3, 1}});
  term.check({1, 2, 10, 10});
  expect_error_naming<ShapeError>([&] { term.check({1, 2, 9, 10}); }, "queries on the query grid");
  expect_error_naming<ShapeError>([&] { term.check({1, 2, 10, 11}); }, "keys on the key grid");
  expect_error_naming<ShapeError>([&] { term.check({1, 3, 10, 10}); }, "alpha");
  term.alpha.resize(3);  // center_shift still has 2 rows
  expect_error_naming<ShapeError>([&] { term.check({1, 3, 10, 10}); }, "center_shift");
  GeneralizedQuadraticEncoding<float> general({2, {3, 3}});
  expect_error_naming<ShapeError>([&] { general.check({1, 3, 9, 9}); }, "center_shift");
  general.center_shift.resize(3, 2);
  expect_error_naming<ShapeError>([&] { general.check({1, 3, 9, 9}); }, "inverse_covariance");
}

}  // namespace
}  // namespace attnlens
