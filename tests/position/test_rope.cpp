// RoPE in both pairings against the PyTorch oracle (RoFormer/GPT-J interleaved, GPT-NeoX/Llama
// rotate_half), the relative-position property, and RoPE inside MultiHeadAttention.
#include <gtest/gtest.h>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/position/rope.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

template <class T>
class RopeTest : public ::testing::Test {};
TYPED_TEST_SUITE(RopeTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(RopeTest, RotationsAndScoresMatchOracle) {
  using T = TypeParam;
  const io::SafeTensors file = testing::load_positions_fixture<T>();
  const double tol = testing::default_tolerance<T>();
  for (const auto& [name, pairing, base, d] :
       {std::tuple<std::string, RopePairing, double, Index>{"rope_interleaved",
                                                            RopePairing::interleaved, 1e4, 8},
        {"rope_half", RopePairing::half, 1e4, 8},
        {"rope_half_base500", RopePairing::half, 500.0, 16},
        {"rope_interleaved_base500", RopePairing::interleaved, 500.0, 16}}) {
    SCOPED_TRACE(name);
    const RotaryEmbedding<T> rope({d, base, pairing});
    Tensor<T> queries = file.get<T>(name + ".queries"), keys = file.get<T>(name + ".keys");
    Tensor<T> scores({3, 11, 13});
    for (Index h = 0; h < 3; ++h) {
      // Queries as one block, keys in two blocks: positions follow first_position.
      rope.transform_queries({0, h, 0}, queries.matrix({h}));
      rope.transform_keys({0, h, 0}, keys.matrix({h}).topRows(5));
      rope.transform_keys({0, h, 5}, keys.matrix({h}).bottomRows(8));
      scores.matrix({h}) = queries.matrix({h}) * keys.matrix({h}).transpose();
    }
    ATTNLENS_EXPECT_CLOSE(queries, file.get<T>(name + ".queries_rotated"), tol);
    ATTNLENS_EXPECT_CLOSE(keys, file.get<T>(name + ".keys_rotated"), tol);
    ATTNLENS_EXPECT_CLOSE(scores, file.get<T>(name + ".scores"), 10 * tol);  // sums of 16
  }
}

// rot(q, p_i).rot(k, p_j) depends on p_j - p_i only: the same q and k at positions shifted by
// any amount give the same score.
TEST(Rope, ScoreDependsOnlyOnTheOffset) {
  Rng rng(5);
  for (const RopePairing pairing : {RopePairing::interleaved, RopePairing::half}) {
    const RotaryEmbedding<double> rope({16, 10000.0, pairing});
    Matrix<double> q(1, 16), k(1, 16);
    init::normal(q, rng);
    init::normal(k, rng);
    const auto score = [&](Index p_i, Index p_j) {
      Matrix<double> rq = q, rk = k;
      rope.rotate(p_i, rq);
      rope.rotate(p_j, rk);
      return rq.row(0).dot(rk.row(0));
    };
    for (const Index offset : {-7, 0, 3, 40}) {
      const double reference = score(50, 50 + offset);
      for (const Index p_i : {50, 51, 64, 300})
        EXPECT_NEAR(score(p_i, p_i + offset), reference, 1e-10) << offset << " at " << p_i;
    }
    EXPECT_GT(std::abs(score(10, 13) - score(10, 14)), 1e-6);  // and it does depend on it
  }
}

// The CLI fixtures hold nn.MultiheadAttention weights with RoPE applied per head in PyTorch.
template <class T>
void check_multi_head(const std::string& name, RopePairing pairing) {
  SCOPED_TRACE(name);
  const auto weights = testing::load_fixture("cli/mha_pos_" + name + "_weights.safetensors");
  const auto input = testing::load_fixture("cli/mha_pos_" + name + "_input.safetensors");
  const auto expected = testing::load_fixture("cli/mha_pos_" + name + "_expected.safetensors");
  const Index heads = std::stol(expected.metadata().at("num_heads"));
  auto mha = io::load_multi_head_attention<T>(weights, "", heads);
  mha.query_key_transforms.push_back(
      std::make_shared<RotaryEmbedding<T>>(RopeOptions{mha.head_dim(), 10000.0, pairing}));
  const Tensor<T> query = input.get<T>("query");
  ATTNLENS_EXPECT_CLOSE(mha.forward(query).output, expected.get<T>("output"),
                        testing::default_tolerance<T>());
  // The separate-projection path transforms the same way.
  const Tensor<T> copy = query;
  ATTNLENS_EXPECT_CLOSE(mha.forward(query, copy, copy).output, expected.get<T>("output"),
                        testing::default_tolerance<T>());
}

TEST(Rope, InsideMultiHeadAttentionMatchesPyTorch) {
  check_multi_head<float>("rope", RopePairing::interleaved);
  check_multi_head<double>("rope_half", RopePairing::half);
}

TEST(Rope, BadOptionsNameTheArgument) {
  using testing::expect_error_naming;
  expect_error_naming<ArgumentError>([] { RotaryEmbedding<float>({7}); }, "head_dim");
  expect_error_naming<ArgumentError>([] { RotaryEmbedding<float>({8, 0.5}); }, "base");
  Rng rng(1);
  MultiHeadAttention<float> mha({16, 4}, rng);
  mha.query_key_transforms.push_back(std::make_shared<RotaryEmbedding<float>>(RopeOptions{8}));
  expect_error_naming<ArgumentError>(
      [&] {
        (void)mha.forward(Tensor<float>({1, 3, 16}));
      },
      "head_dim");
}

}  // namespace
}  // namespace attnlens
