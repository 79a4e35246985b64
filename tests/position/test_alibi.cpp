// ALiBi against Press et al.'s published slopes and the PyTorch oracle's biases
// (tests/reference/oracles/positions.py), tile by tile, in float and double.
#include <gtest/gtest.h>

#include <cmath>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/position/alibi.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

using testing::term_bias;

template <class T>
class AlibiTest : public ::testing::Test {};
TYPED_TEST_SUITE(AlibiTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(AlibiTest, SlopesMatchPressEtAlForAnyHeadCount) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  for (Index heads : {1, 2, 3, 6, 8, 12, 16, 24}) {
    SCOPED_TRACE(heads);
    const Tensor<T> expected = file.get<T>("alibi.slopes_h" + std::to_string(heads));
    const Vector<T> slopes = alibi_slopes<T>(heads);
    ATTNLENS_EXPECT_CLOSE(Tensor<T>::from_matrix(slopes.transpose()), expected.reshaped({1, heads}),
                          testing::default_tolerance<T>());
  }
}

TEST(Alibi, SlopesForEightAndTwelveHeadsAreThePublishedOnes) {
  const Vector<double> eight = alibi_slopes<double>(8);
  for (Index h = 0; h < 8; ++h) EXPECT_EQ(eight[h], std::pow(2.0, -static_cast<double>(h + 1)));
  // Press et al.'s list for 12 heads: the 8-head slopes, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5.
  const double published[12] = {0.5,
                                0.25,
                                0.125,
                                0.0625,
                                0.03125,
                                0.015625,
                                0.0078125,
                                0.00390625,
                                std::pow(2.0, -0.5),
                                std::pow(2.0, -1.5),
                                std::pow(2.0, -2.5),
                                std::pow(2.0, -3.5)};
  const Vector<double> twelve = alibi_slopes<double>(12);
  for (Index h = 0; h < 12; ++h) EXPECT_NEAR(twelve[h], published[h], 1e-15) << h;
}

TYPED_TEST(AlibiTest, BiasMatchesOracleInBothForms) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = testing::default_tolerance<T>();
  const Alibi<T> symmetric({6, false});
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(symmetric, 6, 7, 9), file.get<T>("alibi.symmetric.bias"), tol);
  const Alibi<T> causal({5, true});
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(causal, 5, 8, 8), file.get<T>("alibi.causal.bias"), tol);
}

// Relative-only attention commutes with shifts: on a sequence whose tokens are a shifted copy,
// interior queries whose window is far from the ends give the same outputs.
TEST(Alibi, RelativeOnlyAttentionIsTranslationEquivariantInTheInterior) {
  Rng rng(3);
  MultiHeadAttention<double> mha({8, 2}, rng);
  // Steep slopes: keys further than a few steps carry no weight, so the window is local.
  auto alibi = std::make_shared<Alibi<double>>(AlibiOptions{2, false});
  alibi->slopes << 12.0, 9.0;
  mha.score_terms.push_back(alibi);
  const Index L = 16, shift = 3;
  Tensor<double> x({1, L, 8}), shifted({1, L, 8});
  for (auto& v : x.storage()) v = rng.normal<double>();
  for (Index i = 0; i < L; ++i) shifted.matrix({0}).row(i) = x.matrix({0}).row((i + shift) % L);
  const auto y = mha.forward(x).output, ys = mha.forward(shifted).output;
  for (Index i = 5; i < L - shift - 5; ++i)
    ATTNLENS_EXPECT_CLOSE(ys.matrix({0}).row(i), y.matrix({0}).row(i + shift), 1e-12) << i;
}

TEST(Alibi, BadHeadCountsNameTheArgument) {
  testing::expect_error_naming<ArgumentError>([] { (void)alibi_slopes<float>(0); }, "num_heads");
  const Alibi<float> alibi({4, false});
  testing::expect_error_naming<ShapeError>([&] { alibi.check({1, 3, 5, 5}); }, "Alibi slopes");
}

}  // namespace
}  // namespace attnlens
