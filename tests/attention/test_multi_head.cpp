// MultiHeadAttention against torch.nn.MultiheadAttention (fixtures from
// tests/reference/generate.py), plus properties and bad-input checks.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "support/fixtures.hpp"

namespace attnlens {
namespace {

using testing::fixture_cases;
using testing::load_fixture;

// The fixture's masks in attnlens's typed form (PyTorch polarity converted on reading).
template <class T>
AttentionMask<T> mask_from(const io::SafeTensors& file, const std::string& prefix,
                           const nlohmann::json& c) {
  AttentionMask<T> mask = io::read_torch_masks<T>(
      file, prefix, {c["batch"], c["num_heads"], c["tgt_len"], c["src_len"]});
  mask.causal = c["causal"].get<bool>();
  return mask;
}

template <class T>
void check_against_pytorch(const std::string& fixture) {
  const auto file = load_fixture(fixture);
  const auto cases = fixture_cases(file);
  ASSERT_GE(cases.size(), 16u) << fixture;
  const double tol = testing::default_tolerance<T>();
  for (const auto& c : cases) {
    const std::string name = c["name"], prefix = name + ".";
    SCOPED_TRACE(fixture + " case " + name);
    const auto mha = io::load_multi_head_attention<T>(file, prefix, c["num_heads"].get<Index>());
    ASSERT_EQ(mha.kdim(), c["kdim"].get<Index>());
    ASSERT_EQ(mha.vdim(), c["vdim"].get<Index>());
    ASSERT_EQ(mha.has_bias(), c["bias"].get<bool>());
    const auto mask = mask_from<T>(file, prefix, c);
    const Tensor<T> query = file.get<T>(prefix + "query");
    const Tensor<T> key = file.get<T>(prefix + "key");
    const Tensor<T> value = file.get<T>(prefix + "value");

    const MultiHeadForwardOptions per_head{AttentionWeights::per_head, {}};
    const MultiHeadForwardOptions averaged{AttentionWeights::averaged, {}};
    // Self-attention cases go through the one-GEMM packed projection.
    const auto result = c["self_attention"].get<bool>()
                            ? mha.forward(query, mask, per_head)
                            : mha.forward(query, key, value, mask, per_head);
    ATTNLENS_EXPECT_CLOSE(result.output, file.get<T>(prefix + "output"), tol);
    ATTNLENS_EXPECT_CLOSE(result.weights, file.get<T>(prefix + "weights"), tol);
    const auto mean = mha.forward(query, key, value, mask, averaged);
    ATTNLENS_EXPECT_CLOSE(mean.output, file.get<T>(prefix + "output"), tol);
    ATTNLENS_EXPECT_CLOSE(mean.weights, file.get<T>(prefix + "weights_avg"), tol);
  }
}

// PyTorch 1.13 returns NaN for a fully masked row; those fixture rows hold attnlens's
// documented answer instead (weights 0, the head's output 0), computed by the generator
// from torch primitives and checked there against nn.MultiheadAttention on the other rows.
TEST(MultiHeadAttention, MatchesPyTorchFloat) {
  check_against_pytorch<float>("mha_f32.safetensors");
}
TEST(MultiHeadAttention, MatchesPyTorchDouble) {
  check_against_pytorch<double>("mha_f64.safetensors");
}

template <class T>
Tensor<T> random_tensor(const Shape& shape, Rng& rng) {
  Tensor<T> t(shape);
  for (auto& v : t.storage()) v = rng.normal<T>();
  return t;
}

// A module whose parameters are all away from their initial values, biases included.
MultiHeadAttention<double> perturbed_module(const MultiHeadAttentionOptions& options, Rng& rng) {
  MultiHeadAttention<double> mha(options, rng);
  for (Matrix<double>* m : {&mha.in_proj_weight, &mha.q_proj_weight, &mha.k_proj_weight,
                            &mha.v_proj_weight, &mha.out_proj.weight})
    for (Index i = 0; i < m->size(); ++i) m->data()[i] += 0.1 * rng.normal<double>();
  for (Vector<double>* v : {&mha.in_proj_bias, &mha.out_proj.bias})
    for (Index i = 0; i < v->size(); ++i) (*v)[i] = 0.2 * rng.normal<double>();
  return mha;
}

TEST(MultiHeadAttention, PackedSelfAttentionEqualsSeparateProjections) {
  Rng rng(7);
  const auto mha = perturbed_module({16, 4}, rng);
  const auto x = random_tensor<double>({2, 5, 16}, rng);
  const Tensor<double> copy = x;  // a distinct object: takes the three-GEMM path
  const auto a = mha.forward(x);
  const auto b = mha.forward(x, copy, copy);
  ATTNLENS_EXPECT_CLOSE(a.output, b.output, 1e-12);
}

TEST(MultiHeadAttention, PermutingTokensPermutesOutputs) {
  Rng rng(8);
  const auto mha = perturbed_module({12, 3}, rng);
  const auto x = random_tensor<double>({1, 6, 12}, rng);
  const std::vector<Index> perm{3, 0, 5, 1, 4, 2};
  Tensor<double> px({1, 6, 12});
  for (Index i = 0; i < 6; ++i) px.matrix({0}).row(i) = x.matrix({0}).row(perm[i]);
  const auto y = mha.forward(x).output;
  const auto py = mha.forward(px).output;
  for (Index i = 0; i < 6; ++i)
    EXPECT_LE((py.matrix({0}).row(i) - y.matrix({0}).row(perm[i])).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(MultiHeadAttention, ThreadCountDoesNotChangeResults) {
  Rng rng(9);
  const auto mha = perturbed_module({24, 6}, rng);
  const auto x = random_tensor<double>({3, 7, 24}, rng);
  const MultiHeadForwardOptions one{AttentionWeights::per_head, ParallelOptions{1}};
  const MultiHeadForwardOptions two{AttentionWeights::per_head, ParallelOptions{2}};
  const auto a = mha.forward(x, {}, one);
  const auto b = mha.forward(x, {}, two);
  EXPECT_EQ(a.output, b.output);
  EXPECT_EQ(a.weights, b.weights);
}

TEST(MultiHeadAttention, UnbatchedInputEqualsBatchOfOne) {
  Rng rng(10);
  const auto mha = perturbed_module({8, 2}, rng);
  const auto x = random_tensor<double>({5, 8}, rng);
  const MultiHeadForwardOptions averaged{AttentionWeights::averaged, {}};
  const auto unbatched = mha.forward(x, {}, averaged);
  const auto batched = mha.forward(x.reshaped({1, 5, 8}), {}, averaged);
  EXPECT_EQ(unbatched.output.shape(), (Shape{5, 8}));
  EXPECT_EQ(unbatched.weights.shape(), (Shape{5, 5}));
  EXPECT_EQ(unbatched.output.storage(), batched.output.storage());
  EXPECT_EQ(unbatched.weights.storage(), batched.weights.storage());
}

TEST(MultiHeadAttention, CacheHoldsWhatTheOutputIsMadeOf) {
  Rng rng(11);
  const auto mha = perturbed_module({8, 2}, rng);
  const auto x = random_tensor<double>({2, 4, 8}, rng);
  MultiHeadCache<double> cache;
  const auto result = mha.forward(x, {}, {AttentionWeights::per_head, {}}, &cache);
  EXPECT_EQ(cache.weights, result.weights);
  const Matrix<double> rebuilt = mha.out_proj.forward(cache.context);
  const Tensor<double> flat = result.output.reshaped({8, 8});
  EXPECT_LE((rebuilt - flat.matrix()).cwiseAbs().maxCoeff(), 1e-14);
  // Head 1 of sequence 1: context = A V from the cached projections.
  const Matrix<double> head = cache.weights.matrix({1, 1}) * cache.values.block(4, 4, 4, 4);
  EXPECT_LE((head - cache.context.block(4, 4, 4, 4)).cwiseAbs().maxCoeff(), 1e-14);
}

// A domain kernel passed as a score term acts exactly like the same bias passed as a mask.
class TensorBias final : public ScoreTerm<double> {
 public:
  explicit TensorBias(Tensor<double> bias) : bias_(std::move(bias)) {}
  void check(const ScoreShape& shape) const override {
    detail::require_shape(bias_.shape() == Shape{shape.heads, shape.queries, shape.keys},
                          "TensorBias", "[H, L, S]", detail::shape_string(bias_.shape()));
  }
  void add(const ScoreTile<double>& tile, MatrixRef<double> scores) const override {
    scores += bias_.matrix({tile.at.head})
                  .block(tile.at.query_begin, tile.at.key_begin, scores.rows(), scores.cols());
  }

 private:
  Tensor<double> bias_;
};

TEST(MultiHeadAttention, ScoreTermsComposeWithTheEngine) {
  Rng rng(12);
  auto mha = perturbed_module({8, 2}, rng);
  const auto x = random_tensor<double>({2, 5, 8}, rng);
  const auto bias = random_tensor<double>({2, 5, 5}, rng);
  AttentionMask<double> as_mask;
  as_mask.bias = bias;
  const auto expected = mha.forward(x, as_mask).output;
  const auto plain = mha.forward(x).output;
  mha.score_terms.push_back(std::make_shared<TensorBias>(bias));
  const auto with_term = mha.forward(x).output;
  ATTNLENS_EXPECT_CLOSE(with_term, expected, 1e-14);
  EXPECT_GT(testing::max_abs_error(with_term, plain), 1e-3);  // the term changed something
  mha.score_terms.back() = std::make_shared<TensorBias>(random_tensor<double>({3, 5, 5}, rng));
  EXPECT_THROW(mha.forward(x), ShapeError);
}

TEST(MultiHeadAttention, FullyMaskedRowGivesOutProjBias) {
  Rng rng(13);
  const auto mha = perturbed_module({8, 2}, rng);
  const auto x = random_tensor<double>({1, 3, 8}, rng);
  AttentionMask<double> mask;
  mask.keep = Tensor<std::uint8_t>({3, 3}, {1, 1, 1, 0, 0, 0, 1, 0, 1});
  const auto result = mha.forward(x, mask, {AttentionWeights::per_head, {}});
  for (Index h = 0; h < 2; ++h)
    EXPECT_EQ(result.weights.matrix({0, h}).row(1).cwiseAbs().sum(), 0.0);
  EXPECT_LE(
      (result.output.matrix({0}).row(1).transpose() - mha.out_proj.bias).cwiseAbs().maxCoeff(),
      1e-15);
  EXPECT_TRUE(result.output.matrix({0}).allFinite());
}

TEST(MultiHeadAttention, MaskedKeysHoldingNanOrInfDoNotReachTheOutput) {
  Rng rng(14);
  const auto mha = perturbed_module({8, 2}, rng);
  auto x = random_tensor<double>({2, 4, 8}, rng);
  AttentionMask<double> mask;
  mask.key_lengths = std::vector<Index>{4, 2};  // sequence 1 ignores keys 2 and 3
  const auto clean = mha.forward(x, mask).output;
  x.at({1, 2, 3}) = std::numeric_limits<double>::quiet_NaN();
  x.at({1, 3, 0}) = std::numeric_limits<double>::infinity();
  const auto dirty = mha.forward(x, mask).output;
  // Rows 0 and 1 of sequence 1 only attend keys 0 and 1, whose inputs are unchanged.
  for (Index i = 0; i < 2; ++i)
    EXPECT_LE((dirty.matrix({1}).row(i) - clean.matrix({1}).row(i)).cwiseAbs().maxCoeff(), 1e-15);
  EXPECT_EQ(dirty.matrix({0}), clean.matrix({0}));
}

TEST(MultiHeadAttention, BadOptionsNameTheArgument) {
  const auto expect_message = [](const MultiHeadAttentionOptions& o, const std::string& word) {
    try {
      MultiHeadAttention<float> mha(o);
      ADD_FAILURE() << "no exception for " << word;
    } catch (const ArgumentError& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  expect_message({0, 1}, "embed_dim");
  expect_message({8, 0}, "num_heads");
  expect_message({8, 3}, "num_heads");
  expect_message({8, 2, true, -1}, "kdim");
  expect_message({8, 2, true, 0, -2}, "vdim");
}

TEST(MultiHeadAttention, BadInputShapesNameTheArgument) {
  Rng rng(15);
  const MultiHeadAttention<float> mha({8, 2, true, 6, 5}, rng);
  const auto q = random_tensor<float>({2, 3, 8}, rng);
  const auto k = random_tensor<float>({2, 4, 6}, rng);
  const auto v = random_tensor<float>({2, 4, 5}, rng);
  const auto expect_shape_error = [&](const Tensor<float>& q_, const Tensor<float>& k_,
                                      const Tensor<float>& v_, const AttentionMask<float>& m,
                                      const std::string& word) {
    try {
      (void)mha.forward(q_, k_, v_, m);
      ADD_FAILURE() << "no exception for " << word;
    } catch (const ShapeError& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  const AttentionMask<float> none;
  expect_shape_error(random_tensor<float>({2, 3, 7}, rng), k, v, none, "query");
  expect_shape_error(random_tensor<float>({2, 3, 3, 8}, rng), k, v, none, "query");
  expect_shape_error(q, random_tensor<float>({2, 4, 8}, rng), v, none, "key");
  expect_shape_error(q, random_tensor<float>({1, 4, 6}, rng), v, none, "key");
  expect_shape_error(q, k, random_tensor<float>({2, 4, 6}, rng), none, "value");
  expect_shape_error(q, k, random_tensor<float>({2, 5, 5}, rng), none, "value");
  expect_shape_error(q, random_tensor<float>({2, 0, 6}, rng), random_tensor<float>({2, 0, 5}, rng),
                     none, "key");
  AttentionMask<float> bad_keep;
  bad_keep.keep = Tensor<std::uint8_t>({3, 5});
  expect_shape_error(q, k, v, bad_keep, "mask.keep");
  AttentionMask<float> bad_bias;
  bad_bias.bias = Tensor<float>({3, 2, 3, 4});
  expect_shape_error(q, k, v, bad_bias, "mask.bias");
  AttentionMask<float> bad_padding;
  bad_padding.key_keep = Tensor<std::uint8_t>({3, 4});
  expect_shape_error(q, k, v, bad_padding, "mask.key_keep");
  AttentionMask<float> bad_lengths;
  bad_lengths.key_lengths = std::vector<Index>{4};
  expect_shape_error(q, k, v, bad_lengths, "mask.key_lengths");
  bad_lengths.key_lengths = std::vector<Index>{4, 5};
  EXPECT_THROW((void)mha.forward(q, k, v, bad_lengths), ArgumentError);
}

TEST(MultiHeadAttention, CheckParametersNamesTheParameter) {
  MultiHeadAttention<float> mha({8, 2});
  mha.check_parameters();
  mha.in_proj_weight.resize(8, 8);
  try {
    mha.check_parameters();
    ADD_FAILURE();
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("in_proj_weight"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace attnlens
