// MultiHeadAttention against torch.nn.MultiheadAttention (fixtures from
// tests/reference/generate.py), plus properties and bad-input checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/io/torch_masks.hpp"
#include "attnlens/position/sinusoidal.hpp"
#include "support/blocks.hpp"
#include "support/fixtures.hpp"
#include "support/mha_fixtures.hpp"

namespace attnlens {
namespace {

using testing::fixture_cases;
using testing::load_fixture;

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
    const auto mask = testing::mha_case_mask<T>(file, prefix, c);
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

// The float fast paths (the projection kernel writing q, k and v in place, the fused softmax
// tiles) against the separate-projection path and the reference engine, on 1 and 2 threads; the
// weights are read in place, so a changed parameter shows in the next call.
TEST(MultiHeadAttention, FloatFastPathsMatchAndSeeParameterChanges) {
  for (const Index E : {64, 48, 20}) {  // column tiles of 14: 64 and 48 split unevenly; 20 < 2 x 14
    SCOPED_TRACE(::testing::Message() << "E = " << E);
    Rng rng(17);
    MultiHeadAttention<float> mha({E, 4}, rng);
    for (Matrix<float>* m : {&mha.in_proj_weight, &mha.out_proj.weight})
      for (Index i = 0; i < m->size(); ++i) m->data()[i] += 0.1f * rng.normal<float>();
    for (Vector<float>* v : {&mha.in_proj_bias, &mha.out_proj.bias})
      for (Index i = 0; i < v->size(); ++i) (*v)[i] = 0.2f * rng.normal<float>();
    const auto x = random_tensor<float>({2, 150, E}, rng);
    const Tensor<float> copy = x;
    MultiHeadForwardOptions reference, two;
    reference.engine = AttentionEngine::reference;
    two.parallel.threads = 2;
    const auto fused = mha.forward(x);
    ATTNLENS_EXPECT_CLOSE(fused.output, mha.forward(x, copy, copy, {}, reference).output, 1e-5);
    ATTNLENS_EXPECT_CLOSE(mha.forward(x, {}, two).output, fused.output, 1e-5);

    mha.in_proj_weight *= 2.0f;
    mha.out_proj.bias.setZero();
    const auto changed = mha.forward(x, {}, two);
    ATTNLENS_EXPECT_CLOSE(changed.output, mha.forward(x, copy, copy, {}, reference).output, 1e-5);
    EXPECT_GT(testing::max_abs_error(changed.output.matrix({0}), fused.output.matrix({0})), 1e-2);
  }
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
    ATTNLENS_EXPECT_CLOSE(py.matrix({0}).row(i), y.matrix({0}).row(perm[i]), 1e-12);
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
  ATTNLENS_EXPECT_CLOSE(rebuilt, flat.matrix(), 1e-14);
  // Head 1 of sequence 1: context = A V from the cached projections.
  const Matrix<double> head = cache.weights.matrix({1, 1}) * cache.values.block(4, 4, 4, 4);
  ATTNLENS_EXPECT_CLOSE(head, cache.context.block(4, 4, 4, 4), 1e-14);
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
  // A fixed bias: nothing to differentiate.
  void add_backward(const ScoreTile<double>&, ConstMatrixRef<double>,
                    ScoreTileGradient<double>&) const override {}

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
  ATTNLENS_EXPECT_CLOSE(result.output.matrix({0}).row(1).transpose(), mha.out_proj.bias, 1e-15);
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
    ATTNLENS_EXPECT_CLOSE(dirty.matrix({1}).row(i), clean.matrix({1}).row(i), 1e-15);
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

// ---------------------------------------------------------------------------------------------
// Attention variants (docs/math.md section 2), against tests/reference/oracles/variants.py.

template <class T>
MultiHeadAttention<T> variant_module(const io::SafeTensors& file, const nlohmann::json& c) {
  MultiHeadAttentionOptions o{c["embed_dim"].get<Index>(), c["num_heads"].get<Index>()};
  AttentionVariantOptions& v = o.variant;
  v.type = attention_variant_from_name(c["type"]);
  v.boost = c["boost"];
  if (c.contains("domain")) v.domain.type = distance_kernel_from_name(c["domain"]);
  if (c.contains("leading")) v.domain.leading = c["leading"];
  if (c.contains("grid")) v.domain.grid = Grid2d{c["grid"][0], c["grid"][1], c["grid"][2]};
  if (c.contains("huber_a")) v.huber_a = c["huber_a"];
  if (c.contains("neutreno_lambda")) v.neutreno_lambda = c["neutreno_lambda"];
  MultiHeadAttention<T> mha(o);
  const std::string p = c["name"].get<std::string>() + ".";
  const Index E = mha.embed_dim(), H = mha.num_heads();
  mha.in_proj_weight = io::read_matrix<T>(file, p + "in_proj_weight", 3 * E, E);
  mha.in_proj_bias = io::read_vector<T>(file, p + "in_proj_bias", 3 * E);
  mha.out_proj.weight = io::read_matrix<T>(file, p + "out_proj.weight", E, E);
  mha.out_proj.bias = io::read_vector<T>(file, p + "out_proj.bias", E);
  if (v.type == AttentionVariantType::bilateral) mha.rho = io::read_vector<T>(file, p + "rho", H);
  if (v.type == AttentionVariantType::fourier)
    mha.fourier_r = io::read_vector<T>(file, p + "fourier_r", 1);
  mha.check_parameters();
  return mha;
}

template <class T>
void check_variants_against_pytorch(const std::string& fixture) {
  const auto file = load_fixture(fixture);
  const auto cases = fixture_cases(file);
  ASSERT_GE(cases.size(), 14u);
  const double tol = testing::default_tolerance<T>();
  double worst = 0;
  for (const auto& c : cases) {
    const std::string name = c["name"], p = name + ".";
    SCOPED_TRACE(fixture + " case " + name);
    const auto mha = variant_module<T>(file, c);
    const Index B = c["batch"], L = c["length"], E = c["embed_dim"];
    const Tensor<T> x = file.get<T>(p + "x");
    AttentionMask<T> mask;
    const Tensor<std::uint8_t> keep = file.get<std::uint8_t>(p + "key_keep");
    if (std::any_of(keep.storage().begin(), keep.storage().end(), [](auto k) { return k == 0; }))
      mask.key_keep = keep;
    Matrix<T> first, previous;
    StackValues<T> stack;
    if (file.contains(p + "first_values")) {
      first = io::read_matrix<T>(file, p + "first_values", B * L, E);
      stack.first = &first;
    }
    if (file.contains(p + "previous_values")) {
      previous = io::read_matrix<T>(file, p + "previous_values", B * L, E);
      stack.previous = &previous;
    }
    for (const AttentionEngine engine : {AttentionEngine::reference, AttentionEngine::fused}) {
      const bool reference = engine == AttentionEngine::reference;
      SCOPED_TRACE(reference ? "reference engine" : "fused engine");
      MultiHeadForwardOptions options;
      options.engine = engine;
      options.weights = reference ? AttentionWeights::per_head : AttentionWeights::none;
      options.tiling = {3, 2};  // several tiles and key blocks even on 7 tokens
      const auto result = mha.forward(x, mask, options, nullptr, stack);
      const Tensor<T> expected = file.get<T>(p + "output");
      worst = std::max(worst, testing::max_abs_error(result.output, expected));
      ATTNLENS_EXPECT_CLOSE(result.output, expected, tol);
      if (reference) {
        ATTNLENS_EXPECT_CLOSE(result.weights, file.get<T>(p + "weights"), tol);
      }
      if (uses_stack_values(mha.variant().type)) {
        ATTNLENS_EXPECT_CLOSE(result.values, io::read_matrix<T>(file, p + "values", B * L, E), tol);
      }
    }
  }
  std::cout << fixture << ": max |attnlens - PyTorch| over all variants " << worst << "\n";
}

TEST(MultiHeadAttentionVariants, MatchPyTorchFloat) {
  check_variants_against_pytorch<float>("variants_f32.safetensors");
}
TEST(MultiHeadAttentionVariants, MatchPyTorchDouble) {
  check_variants_against_pytorch<double>("variants_f64.safetensors");
}

MultiHeadAttention<double> variant_module(AttentionVariantOptions variant, Rng& rng, Index E = 8,
                                          Index H = 2) {
  MultiHeadAttentionOptions options{E, H};
  options.variant = std::move(variant);
  return perturbed_module(options, rng);
}

// Context of head h of sequence b, its weights and values, from a cached reference forward.
struct HeadView {
  Matrix<double> weights, values, context;
};
HeadView head_view(const MultiHeadCache<double>& cache, Index b, Index h, Index L, Index d) {
  return {cache.weights.matrix({b, h}), cache.values.block(b * L, h * d, L, d),
          cache.context.block(b * L, h * d, L, d)};
}

TEST(MultiHeadAttentionVariants, TwicingEqualsTwoAMinusASquaredTimesV) {
  Rng rng(21);
  AttentionVariantOptions twicing;
  twicing.boost = 1;
  const auto mha = variant_module(twicing, rng);
  const auto x = random_tensor<double>({2, 6, 8}, rng);
  MultiHeadCache<double> cache;
  (void)mha.forward(x, {}, {AttentionWeights::per_head, {}}, &cache);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 2; ++h) {
      const HeadView v = head_view(cache, b, h, 6, 4);
      const Matrix<double> A = v.weights;
      const Matrix<double> expected = (2.0 * A - A * A) * v.values;
      ATTNLENS_EXPECT_CLOSE(v.context, expected, 1e-13);
      EXPECT_GT(testing::max_abs_error(v.context, A * v.values), 1e-3);  // not plain A V
    }
}

TEST(MultiHeadAttentionVariants, BoostingOfOrderKEqualsMatrixPolynomial) {
  Rng rng(22);
  const auto x = random_tensor<double>({1, 7, 8}, rng);
  for (Index k : {0, 1, 2, 4}) {
    SCOPED_TRACE(k);
    AttentionVariantOptions boosted;
    boosted.boost = k;
    Rng module_rng(23);
    const auto mha = variant_module(boosted, module_rng);
    MultiHeadCache<double> cache;
    (void)mha.forward(x, {}, {AttentionWeights::per_head, {}}, &cache);
    for (Index h = 0; h < 2; ++h) {
      const HeadView v = head_view(cache, 0, h, 7, 4);
      const Matrix<double> I = Matrix<double>::Identity(7, 7);
      Matrix<double> power = I;
      for (Index step = 0; step <= k; ++step) power = power * (I - v.weights);
      ATTNLENS_EXPECT_CLOSE(v.context, (I - power) * v.values, 1e-12);
    }
    // The fused engine boosts the same way (the reference engine named explicitly: without
    // weights the automatic choice is the fused engine itself).
    MultiHeadForwardOptions fused, reference;
    fused.engine = AttentionEngine::fused;
    fused.tiling = {2, 3};
    reference.engine = AttentionEngine::reference;
    ATTNLENS_EXPECT_CLOSE(mha.forward(x, {}, fused).output, mha.forward(x, {}, reference).output,
                          1e-12);
  }
}

TEST(MultiHeadAttentionVariants, NeutrenoWithLambdaZeroIsPlainAttention) {
  Rng rng(24);
  const auto x = random_tensor<double>({2, 5, 8}, rng);
  const Matrix<double> first = random_tensor<double>({10, 8}, rng).matrix();
  AttentionVariantOptions neutreno;
  neutreno.type = AttentionVariantType::neutreno;
  neutreno.neutreno_lambda = 0.0;
  Rng a(25), b(25);
  const auto zero = variant_module(neutreno, a);
  const auto plain = variant_module({}, b);
  ATTNLENS_EXPECT_CLOSE(zero.forward(x, {}, {}, nullptr, {&first, nullptr}).output,
                        plain.forward(x).output, 1e-15);
  // With lambda = 0.6 the fidelity term is out_proj applied to lambda (V^0 - V).
  neutreno.neutreno_lambda = 0.6;
  Rng c(25);
  const auto six = variant_module(neutreno, c);
  const auto result = six.forward(x, {}, {}, nullptr, {&first, nullptr});
  const Matrix<double> term = 0.6 * (first - result.values) * six.out_proj.weight.transpose();
  const Tensor<double> plain_out = plain.forward(x).output;
  const Matrix<double> difference =
      result.output.reshaped({10, 8}).matrix() - plain_out.reshaped({10, 8}).matrix();
  ATTNLENS_EXPECT_CLOSE(difference, term, 1e-13);
  // First layer (no V^0): no term at all.
  ATTNLENS_EXPECT_CLOSE(six.forward(x).output, plain_out, 1e-15);
}

// docs/math.md's theorem: with one head and identity projections, self-attention on x_i = y_i + p_i
// is the Nadaraya-Watson estimate with K_SA(i,j) = exp((y_i + p_i).(y_j + p_j) / sqrt(d)).
TEST(MultiHeadAttentionVariants, IdentityProjectionSelfAttentionIsNadarayaWatson) {
  const Index L = 9, d = 6;
  Rng rng(26);
  MultiHeadAttention<double> mha({d, 1});
  mha.in_proj_weight << Matrix<double>::Identity(d, d), Matrix<double>::Identity(d, d),
      Matrix<double>::Identity(d, d);
  mha.out_proj.weight.setIdentity();
  const Matrix<double> y = random_tensor<double>({L, d}, rng).matrix();
  const Matrix<double> p = sinusoidal_encoding<double>(L, d);
  Tensor<double> x({L, d});
  x.matrix() = y + p;
  const auto out = mha.forward(x).output;
  for (Index i = 0; i < L; ++i) {
    std::vector<double> numerator(static_cast<std::size_t>(d), 0.0);
    double denominator = 0;
    for (Index j = 0; j < L; ++j) {
      double dot = 0;
      for (Index c = 0; c < d; ++c) dot += (y(i, c) + p(i, c)) * (y(j, c) + p(j, c));
      const double kernel = std::exp(dot / std::sqrt(static_cast<double>(d)));
      denominator += kernel;
      for (Index c = 0; c < d; ++c)
        numerator[static_cast<std::size_t>(c)] += kernel * (y(j, c) + p(j, c));
    }
    for (Index c = 0; c < d; ++c)
      EXPECT_NEAR(out.at({i, c}), numerator[static_cast<std::size_t>(c)] / denominator, 1e-12);
  }
}

TEST(MultiHeadAttentionVariants, BilateralTendsToSoftmaxAsSigmaGrows) {
  Rng rng(27);
  const auto x = random_tensor<double>({2, 7, 8}, rng);
  for (const auto type : {DistanceKernelType::gaussian, DistanceKernelType::laplacian}) {
    for (const bool grid : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << (type == DistanceKernelType::gaussian ? "gaussian" : "laplacian")
                   << (grid ? " grid" : " 1-D"));
      AttentionVariantOptions bilateral;
      bilateral.type = AttentionVariantType::bilateral;
      bilateral.domain.type = type;
      if (grid) bilateral.domain.grid = Grid2d{2, 3, 1};
      Rng a(28), b(28);
      auto mha = variant_module(bilateral, a);
      const auto plain = variant_module({}, b).forward(x).output;
      double previous = INFINITY;
      for (const double sigma : {1.0, 10.0, 100.0, 1e4, 1e12}) {
        mha.rho.setConstant(inverse_softplus(sigma));
        const double error = testing::max_abs_error(mha.forward(x).output, plain);
        EXPECT_LT(error, previous) << sigma;
        previous = error;
      }
      EXPECT_LE(previous, 1e-10);
      EXPECT_GT(testing::max_abs_error(
                    (mha.rho.setConstant(inverse_softplus(1.0)), mha.forward(x).output), plain),
                1e-3);
    }
  }
}

// Every variant through the fused engine equals the reference engine, in float, on a sequence
// long enough for many tiles and key blocks.
TEST(MultiHeadAttentionVariants, FusedEngineEqualsReferenceForEveryVariant) {
  const Index B = 2, L = 30, E = 12, H = 3;
  Rng rng(29);
  const auto x = random_tensor<float>({B, L, E}, rng);
  const Matrix<float> first = random_tensor<float>({B * L, E}, rng).matrix();
  const Matrix<float> previous = random_tensor<float>({B * L, E}, rng).matrix();
  AttentionMask<float> mask;
  mask.key_lengths = std::vector<Index>{L, L - 7};
  for (const auto type :
       {AttentionVariantType::softmax, AttentionVariantType::bilateral, AttentionVariantType::kde,
        AttentionVariantType::robust_kde, AttentionVariantType::fourier,
        AttentionVariantType::elliptical, AttentionVariantType::neutreno}) {
    for (const Index boost : {0, 2}) {
      SCOPED_TRACE(::testing::Message() << attention_variant_name(type) << " boost " << boost);
      MultiHeadAttentionOptions options{E, H};
      options.variant.type = type;
      options.variant.boost = boost;
      options.variant.domain.type = DistanceKernelType::laplacian;
      options.variant.domain.grid = Grid2d{5, 6, 0};
      MultiHeadAttention<float> mha(options, rng);
      mha.in_proj_bias.setConstant(0.1f);
      if (type == AttentionVariantType::bilateral) mha.rho << -0.5f, 0.5f, 2.0f;
      if (type == AttentionVariantType::fourier) mha.fourier_r[0] = 0.8f;
      const StackValues<float> stack{&first, &previous};
      MultiHeadForwardOptions reference, fused;
      reference.engine = AttentionEngine::reference;
      fused.engine = AttentionEngine::fused;
      fused.tiling = {4, 7};
      const auto expected = mha.forward(x, mask, reference, nullptr, stack).output;
      ASSERT_TRUE(expected.reshaped({B * L, E}).matrix().allFinite());
      ATTNLENS_EXPECT_CLOSE(mha.forward(x, mask, fused, nullptr, stack).output, expected, 1e-5);
    }
  }
}

// Padded keys take no part in robust KDE's estimate of the mean: a padded sequence gives the
// same outputs on its real tokens as the same tokens alone, even when the padding holds NaN.
TEST(MultiHeadAttentionVariants, RobustKdeIgnoresPaddedKeys) {
  Rng rng(32);
  AttentionVariantOptions robust;
  robust.type = AttentionVariantType::robust_kde;
  const auto mha = variant_module(robust, rng);
  const Index L = 9, real = 6;
  auto x = random_tensor<double>({2, L, 8}, rng);
  Tensor<double> alone({real, 8}), sequence_0({L, 8});
  alone.matrix() = x.matrix({1}).topRows(real);
  sequence_0.matrix() = x.matrix({0});
  for (Index i = real; i < L; ++i) x.matrix({1}).row(i).setConstant(NAN);
  for (const bool lengths : {true, false}) {
    AttentionMask<double> mask;
    if (lengths) {
      mask.key_lengths = std::vector<Index>{L, real};
    } else {
      mask.key_keep = Tensor<std::uint8_t>({2, L});
      for (Index j = 0; j < 2 * L; ++j) mask.key_keep->data()[j] = j < L + real;
    }
    const auto expected = mha.forward(alone).output;
    const auto expected_0 = mha.forward(sequence_0).output;
    for (const AttentionEngine engine : {AttentionEngine::reference, AttentionEngine::fused}) {
      SCOPED_TRACE(engine == AttentionEngine::reference ? "reference engine" : "fused engine");
      MultiHeadForwardOptions options;
      options.engine = engine;
      const auto padded = mha.forward(x, mask, options).output;
      // Sequence 1's real tokens, and all of sequence 0 (no padding, no NaN of its own): as
      // alone, with no NaN anywhere in them.
      ATTNLENS_EXPECT_CLOSE(padded.matrix({1}).topRows(real), expected.matrix(), 1e-13);
      ATTNLENS_EXPECT_CLOSE(padded.matrix({0}), expected_0.matrix(), 1e-13);
    }
  }
}

TEST(MultiHeadAttentionVariants, ValuesAreReturnedForTheNextLayer) {
  Rng rng(30);
  const auto mha = perturbed_module({8, 2}, rng);
  const auto x = random_tensor<double>({2, 3, 8}, rng);
  EXPECT_EQ(mha.forward(x).values.size(), 0);
  MultiHeadForwardOptions options;
  options.return_values = true;
  MultiHeadCache<double> cache;
  const auto result = mha.forward(x, {}, options, &cache);
  EXPECT_EQ(result.values, cache.values);
  EXPECT_EQ(result.values.rows(), 6);
}

TEST(MultiHeadAttentionVariants, BadVariantOptionsAndStackValuesNameTheArgument) {
  const auto expect_message = [](const MultiHeadAttentionOptions& o, const std::string& word) {
    try {
      MultiHeadAttention<float> mha(o);
      ADD_FAILURE() << "no exception for " << word;
    } catch (const ArgumentError& e) {
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  MultiHeadAttentionOptions o{8, 2};
  o.variant.boost = -1;
  expect_message(o, "variant::boost");
  o = {8, 2};
  o.variant.huber_a = 0;
  expect_message(o, "variant::huber_a");
  o = {8, 2};
  o.variant.sigma_init = -1;
  expect_message(o, "variant::sigma_init");
  o = {8, 2};
  o.variant.elliptical_delta = 0;
  expect_message(o, "variant::elliptical_delta");
  o = {8, 2};
  o.variant.fourier_epsilon = -1e-6;
  expect_message(o, "variant::fourier_epsilon");
  o = {8, 2};
  o.variant.neutreno_lambda = NAN;
  expect_message(o, "variant::neutreno_lambda");
  o = {8, 2};
  o.variant.type = AttentionVariantType::kde;
  o.content = false;
  expect_message(o, "content");

  Rng rng(31);
  MultiHeadAttentionOptions neutreno{8, 2};
  neutreno.variant.type = AttentionVariantType::neutreno;
  const MultiHeadAttention<float> mha(neutreno, rng);
  const auto x = random_tensor<float>({2, 3, 8}, rng);
  const Matrix<float> wrong = Matrix<float>::Zero(5, 8);
  testing::expect_error_naming<ShapeError>(
      [&] {
        (void)mha.forward(x, {}, {}, nullptr, {&wrong, nullptr});
      },
      "StackValues::first");
  testing::expect_error_naming<ShapeError>(
      [&] {
        (void)mha.forward(x, {}, {}, nullptr, {nullptr, &wrong});
      },
      "StackValues::previous");
  const Matrix<float> first = Matrix<float>::Zero(8, 8);
  const auto key = random_tensor<float>({2, 4, 8}, rng);
  testing::expect_error_naming<ShapeError>(
      [&] {
        (void)mha.forward(x, key, key, {}, {}, nullptr, {&first, nullptr});
      },
      "NeuTRENO");
}

TEST(MultiHeadAttentionVariants, CheckParametersNamesRhoAndFourierR) {
  MultiHeadAttentionOptions bilateral{8, 2};
  bilateral.variant.type = AttentionVariantType::bilateral;
  MultiHeadAttention<double> mha(bilateral);
  mha.check_parameters();
  EXPECT_NEAR(mha.bilateral_sigma()[1], 4.0, 1e-12);  // sigma_init
  mha.rho.resize(3);
  testing::expect_error_naming<ShapeError>([&] { mha.check_parameters(); }, "rho");
  mha.rho = Vector<double>::Constant(2, NAN);
  testing::expect_error_naming<ArgumentError>([&] { mha.check_parameters(); }, "rho");
  MultiHeadAttentionOptions fourier{8, 2};
  fourier.variant.type = AttentionVariantType::fourier;
  MultiHeadAttention<double> f(fourier);
  EXPECT_EQ(f.fourier_r.size(), 1);
  EXPECT_EQ(f.fourier_r[0], 1.0);  // the published init
  f.fourier_r.resize(0);
  testing::expect_error_naming<ShapeError>([&] { f.check_parameters(); }, "fourier_r");
  MultiHeadAttention<double> plain({8, 2});
  plain.rho.resize(2);
  testing::expect_error_naming<ShapeError>([&] { plain.check_parameters(); }, "rho");
}

// Weights large enough that q.k overflows float where PyTorch, which scales q by 1/sqrt(d)
// first, stays finite: every engine scales q first too, so float agrees with double (whose range
// holds q.k) to float precision, relative to the output's size. The weights are scaled so that
// the largest |q.k| is twice float's maximum: 1/sqrt(d) = 1/4 brings it back in range.
TEST(MultiHeadAttention, LargeProjectionsDoNotOverflowTheScores) {
  const Index E = 32, H = 2, d = E / H;
  Rng rng(19);
  MultiHeadAttention<double> mha64({E, H}, rng);
  const auto x64 = testing::random_tensor<double>({2, 5, E}, rng);
  double largest = 0;  // max |q.k| of one head before the weights are scaled (no bias)
  for (Index b = 0; b < 2; ++b) {
    const Matrix<double> q = x64.matrix({b}) * mha64.in_proj_weight.topRows(E).transpose();
    const Matrix<double> k = x64.matrix({b}) * mha64.in_proj_weight.middleRows(E, E).transpose();
    for (Index h = 0; h < H; ++h)
      largest = std::max(
          largest,
          (q.middleCols(h * d, d) * k.middleCols(h * d, d).transpose()).cwiseAbs().maxCoeff());
  }
  mha64.in_proj_weight *= std::sqrt(2.0 * std::numeric_limits<float>::max() / largest);
  MultiHeadAttention<float> mha32({E, H}, rng);
  mha32.in_proj_weight = mha64.in_proj_weight.cast<float>();
  mha32.in_proj_bias = mha64.in_proj_bias.cast<float>();
  mha32.out_proj.weight = mha64.out_proj.weight.cast<float>();
  mha32.out_proj.bias = mha64.out_proj.bias.cast<float>();
  Tensor<float> x32(x64.shape());
  for (Index i = 0; i < x64.size(); ++i) x32.data()[i] = static_cast<float>(x64.data()[i]);
  AttentionMask<double> causal64;
  causal64.causal = true;
  AttentionMask<float> causal32;
  causal32.causal = true;
  for (const auto engine : {AttentionEngine::fused, AttentionEngine::reference})
    for (const bool masked : {false, true}) {
      SCOPED_TRACE(::testing::Message()
                   << (engine == AttentionEngine::fused ? "fused" : "reference")
                   << (masked ? " causal" : ""));
      MultiHeadForwardOptions options;
      options.engine = engine;
      const auto expected =
          mha64.forward(x64, masked ? causal64 : AttentionMask<double>{}, options).output;
      const auto actual =
          mha32.forward(x32, masked ? causal32 : AttentionMask<float>{}, options).output;
      const double size =
          Eigen::Map<const Vector<double>>(expected.data(), expected.size()).cwiseAbs().maxCoeff();
      ASSERT_GT(size, 1e15);
      ATTNLENS_EXPECT_CLOSE(actual, expected, 1e-5 * size);
    }
}

// What the cache records for a backward pass: the projections before the transforms (robust
// KDE normalizes the keys), the plan's per-key weights, and the boosting iterates, which
// satisfy z_0 = A V, z_{m+1} = z_m + A (V - z_m) with the cached A and V, up to the context.
TEST(MultiHeadAttention, CacheRecordsWhatABackwardPassNeeds) {
  MultiHeadAttentionOptions o{12, 3};
  o.variant.type = AttentionVariantType::robust_kde;
  o.variant.boost = 2;
  Rng rng(77);
  const MultiHeadAttention<double> mha(o, rng);
  Tensor<double> x({2, 5, 12});
  for (auto& v : x.storage()) v = rng.normal<double>();
  MultiHeadCache<double> cache;
  (void)mha.forward(x, {}, {}, &cache);
  ASSERT_EQ(cache.boost_iterates.size(), 2u);
  ASSERT_EQ(cache.numerator_key_weights.size(), 6u);
  EXPECT_NEAR(cache.denominator_key_weights[4].sum(), 1.0, 1e-12);  // Huber weights sum to 1
  EXPECT_NEAR(cache.keys.block(7, 4, 1, 4).norm(), 1.0, 1e-12);     // unit keys
  EXPECT_GT(std::abs(cache.projected_keys.block(7, 4, 1, 4).norm() - 1.0), 1e-3);
  for (Index b = 0; b < 2; ++b)
    for (Index h = 0; h < 3; ++h) {
      const Matrix<double> A = cache.weights.matrix({b, h});
      const Matrix<double> V = cache.values.block(b * 5, h * 4, 5, 4);
      const auto z = [&](std::size_t m) {
        return Matrix<double>(cache.boost_iterates[m].block(b * 5, h * 4, 5, 4));
      };
      ATTNLENS_EXPECT_CLOSE(z(0), A * V, 1e-12);
      ATTNLENS_EXPECT_CLOSE(z(1), z(0) + A * (V - z(0)), 1e-12);
      ATTNLENS_EXPECT_CLOSE(Matrix<double>(cache.context.block(b * 5, h * 4, 5, 4)),
                            z(1) + A * (V - z(1)), 1e-12);
    }
}

}  // namespace
}  // namespace attnlens
