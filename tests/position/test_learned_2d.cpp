// Learned 2-D relative offsets (Bello et al., Cordonnier et al.'s parameter names) against the
// PyTorch oracle, with and without the content term.
#include <gtest/gtest.h>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

using testing::term_bias;

template <class T>
class Learned2dTest : public ::testing::Test {};
TYPED_TEST_SUITE(Learned2dTest, testing::Scalars, testing::ScalarName);

template <class T>
LearnedRelative2d<T> loaded_term(const io::SafeTensors& file) {
  LearnedRelative2d<T> term({3, 6, 5, {5, 6, 1}});
  term.row_embeddings = file.get<T>("learned_2d.row_embeddings").matrix();
  term.col_embeddings = file.get<T>("learned_2d.col_embeddings").matrix();
  term.head_keys_row = file.get<T>("learned_2d.head_keys_row").matrix();
  term.head_keys_col = file.get<T>("learned_2d.head_keys_col").matrix();
  return term;
}

TYPED_TEST(Learned2dTest, MatchesOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  ATTNLENS_EXPECT_CLOSE(term_bias<T>(loaded_term<T>(file), 3, 31, 31),
                        file.get<T>("learned_2d.bias"), testing::default_tolerance<T>());
}

// Without the content term the weights are softmax(bias) whatever the tokens hold; with it
// they change with the tokens.
TEST(Learned2d, PositionalOnlyAttentionIgnoresContent) {
  const auto file = testing::load_fixture("positions_f64.safetensors");
  auto term = std::make_shared<LearnedRelative2d<double>>(loaded_term<double>(file));
  Rng rng(2);
  MultiHeadAttentionOptions options{12, 3};
  options.content = false;
  MultiHeadAttention<double> positional(options, rng);
  positional.score_terms.push_back(term);
  MultiHeadAttention<double> with_content({12, 3}, rng);
  with_content.score_terms.push_back(term);
  Tensor<double> x({2, 31, 12});
  for (auto& v : x.storage()) v = rng.normal<double>();
  const MultiHeadForwardOptions per_head{AttentionWeights::per_head, {}};
  const auto weights = positional.forward(x, {}, per_head).weights;
  Tensor<double> expected = file.get<double>("learned_2d.bias").reshaped({1, 3, 31, 31});
  for (Index h = 0; h < 3; ++h) softmax_rows<double>(expected.matrix({0, h}));
  for (Index b = 0; b < 2; ++b) {
    Tensor<double> item({1, 3, 31, 31});
    for (Index h = 0; h < 3; ++h) item.matrix({0, h}) = weights.matrix({b, h});
    ATTNLENS_EXPECT_CLOSE(item, expected, 1e-12);
  }
  EXPECT_GT(testing::max_abs_error(with_content.forward(x, {}, per_head).weights, weights), 1e-3);
}

TEST(Learned2d, BadShapesNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>(
      [] {
        LearnedRelative2d<float>({1, 0, 4, {2, 2}});
      },
      "max_position");
  expect_error_naming<ArgumentError>([] { LearnedRelative2d<float>({1, 3, 0, {2, 2}}); }, "dim");
  LearnedRelative2d<float> term({2, 3, 4, {3, 3}});
  term.check({1, 2, 9, 9});
  expect_error_naming<ArgumentError>(
      [] {
        LearnedRelative2d<float>({1, 3, 4, {4, 3}}).check({1, 1, 12, 12});
      },
      "max_position");
  expect_error_naming<ShapeError>([&] { term.check({1, 3, 9, 9}); }, "head_keys_row");
  term.col_embeddings.resize(4, 4);
  expect_error_naming<ShapeError>([&] { term.check({1, 2, 9, 9}); }, "col_embeddings");
}

}  // namespace
}  // namespace attnlens
