// The fused engine against the reference engine: every range kernel, score term, mask type,
// window, normalization and boosting order, on odd shapes and tilings that split the keys into
// many blocks, so every online-softmax rescale path runs.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/kernel/fused_engine.hpp"
#include "attnlens/kernel/reference_engine.hpp"
#include "attnlens/kernel/tile.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/t5.hpp"
#include "support/compare.hpp"
#include "support/random_head.hpp"

namespace attnlens {
namespace {

const std::vector<FusedTiling> k_tilings{{64, 256}, {3, 5}, {1, 1}, {7, 64}};

// The fused engine equals the reference engine on every tiling above, to 1e-5. The outputs
// start as NaN, so an entry the fused engine never writes fails the comparison, as does a NaN
// that reaches the output (the reference outputs are checked finite first).
void expect_fused_equals_reference(const HeadInputs<float>& head,
                                   const AttentionKernel<float>& kernel) {
  const Index L = head.queries.rows(), S = head.keys.rows(), dv = head.values.cols();
  Matrix<float> weights(L, S), expected(L, dv);
  reference_attention<float>(head, kernel, weights, expected);
  EXPECT_TRUE(expected.allFinite());
  for (const FusedTiling& tiling : k_tilings) {
    Matrix<float> out = Matrix<float>::Constant(L, dv, std::nanf(""));
    fused_attention<float>(head, kernel, out, {tiling, {2}});
    ATTNLENS_EXPECT_CLOSE(out, expected, 1e-5)
        << "tiling " << tiling.query_tile << " x " << tiling.key_block;
  }
}

struct ShapeCase {
  Index L, S, d, dv;
};

const std::vector<ShapeCase> k_shapes{{1, 1, 1, 1},     {1, 9, 3, 5},     {13, 29, 7, 3},
                                      {64, 64, 16, 16}, {37, 100, 17, 9}, {300, 257, 33, 31}};

TEST(FusedEngine, EqualsReferenceOnOddShapes) {
  for (const auto& s : k_shapes) {
    const auto h = testing::random_head<float>(s.L, s.S, s.d, s.dv, 1);
    SCOPED_TRACE(::testing::Message() << s.L << " x " << s.S << " d=" << s.d);
    expect_fused_equals_reference({0, 0, h.q, h.k, h.v},
                                  {dot_product_range(1.0f / std::sqrt(float(s.d)))});
  }
}

TEST(FusedEngine, EqualsReferenceForEveryMaskType) {
  const Index L = 23, S = 31;
  auto h = testing::random_head<float>(L, S, 5, 4, 2);
  Rng rng(3);
  std::vector<std::pair<std::string, AttentionMask<float>>> masks(6);
  masks[0].first = "causal";
  masks[0].second.causal = true;
  masks[1].first = "key_keep";
  masks[1].second.key_keep = Tensor<std::uint8_t>({S});
  for (Index j = 0; j < S; ++j) masks[1].second.key_keep->data()[j] = j % 3 != 1;
  masks[2].first = "key_lengths";
  masks[2].second.key_lengths = std::vector<Index>{17};
  masks[3].first = "keep with fully masked rows";
  masks[3].second.keep = Tensor<std::uint8_t>({L, S});
  for (Index n = 0; n < L * S; ++n)
    masks[3].second.keep->data()[n] = (n / S) % 5 != 2 && (n * 7) % 11 < 6;
  masks[4].first = "bias with -inf";
  masks[4].second.bias = Tensor<float>({L, S});
  auto bias = masks[4].second.bias->matrix();
  init::normal(bias, rng);
  for (Index n = 0; n < L * S; n += 4)
    masks[4].second.bias->data()[n] = -std::numeric_limits<float>::infinity();
  masks[5].first = "causal + lengths, zero length";
  masks[5].second.causal = true;
  masks[5].second.key_lengths = std::vector<Index>{0};
  for (const auto& [name, mask] : masks) {
    SCOPED_TRACE(name);
    const BoundMask<float> bound(mask, {1, 1, L, S});
    AttentionKernel<float> kernel{dot_product_range(0.4f), nullptr, &bound};
    expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, kernel);
  }
  // A masked key's NaN value never reaches the output, in either engine.
  AttentionMask<float> mask;
  mask.key_keep = Tensor<std::uint8_t>({S});
  for (Index j = 0; j < S; ++j) mask.key_keep->data()[j] = j != 4 && j != 20;
  h.v.row(4).setConstant(std::nanf(""));
  h.v(20, 1) = std::numeric_limits<float>::infinity();
  const BoundMask<float> bound(mask, {1, 1, L, S});
  expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, {dot_product_range(0.4f), nullptr, &bound});
}

TEST(FusedEngine, EqualsReferenceForEveryRangeKernelAndNormalization) {
  const auto h = testing::random_head<float>(29, 41, 6, 5, 4);
  const ScoreTerms<float> alibi{std::make_shared<Alibi<float>>(AlibiOptions{1})};
  RangeKernel<float> distance{RangeKernelType::negative_squared_distance, 0.3f};
  RangeKernel<float> sinc{RangeKernelType::sinc4, 1.0f, 0.7f};
  RangeKernel<float> none{RangeKernelType::none};
  expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, {distance});
  expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, {none, &alibi});
  AttentionKernel<float> fourier{sinc};
  fourier.epsilon = 1e-6f;
  expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, fourier);
  // Robust-KDE-style key weights: different in numerator and denominator.
  Vector<float> numerator(41), denominator(41);
  Rng rng(5);
  init::uniform(numerator, 0.45f, rng);
  init::uniform(denominator, 0.45f, rng);
  numerator.array() += 0.55f;  // weights in [0.1, 1]
  denominator.array() += 0.55f;
  expect_fused_equals_reference({0, 0, h.q, h.k, h.v, numerator.data(), denominator.data()},
                                {distance});
}

TEST(FusedEngine, EqualsReferenceForScoreAndValueTerms) {
  const Index L = 26, S = 26, d = 8;
  const auto h = testing::random_head<float>(L, S, d, d, 6);
  Rng rng(7);
  auto t5 = std::make_shared<T5RelativeBias<float>>(T5BiasOptions{1, 8, 20});
  init::normal(t5->relative_attention_bias, rng);
  auto shaw = std::make_shared<ShawRelativePosition<float>>(ShawOptions{d, 3});
  shaw->reset_parameters(rng);
  const ScoreTerms<float> terms{t5, shaw, std::make_shared<Alibi<float>>(AlibiOptions{1, true})};
  const ValueTerms<float> value_terms{shaw};
  AttentionMask<float> causal;
  causal.causal = true;
  const BoundMask<float> bound(causal, {1, 1, L, S});
  for (Index boost : {0, 2}) {
    AttentionKernel<float> kernel{dot_product_range(0.35f), &terms, nullptr, &value_terms};
    kernel.boost = boost;
    expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, kernel);
    kernel.mask = &bound;
    expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, kernel);
  }
}

TEST(FusedEngine, EqualsReferenceForWindowsAndBoosting) {
  const Grid2d grid{5, 7, 1};  // a CLS token, then a 5 x 7 grid
  const Index L = grid.tokens();
  const auto h = testing::random_head<float>(L, L, 3, 2, 8);
  auto quadratic = std::make_shared<QuadraticEncoding<float>>(QuadraticEncodingOptions{1, grid});
  quadratic->alpha[0] = 0.3f;
  quadratic->center_shift << 1.0f, -0.5f;
  const ScoreTerms<float> terms{quadratic};
  AttentionMask<float> causal;
  causal.causal = true;
  const BoundMask<float> bound(causal, {1, 1, L, L});
  for (Index radius : {0, 1, 2, 40})
    for (bool two_d : {false, true})
      for (Index boost : {0, 1, 3}) {
        SCOPED_TRACE(::testing::Message()
                     << "radius " << radius << (two_d ? " 2-D" : " 1-D") << " boost " << boost);
        AttentionKernel<float> kernel{dot_product_range(0.5f), two_d ? &terms : nullptr};
        kernel.window.radius = radius;
        if (two_d) kernel.window.grid = grid;
        kernel.boost = boost;
        expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, kernel);
        kernel.mask = &bound;
        expect_fused_equals_reference({0, 0, h.q, h.k, h.v}, kernel);
      }
}

// Plain softmax takes the AVX-512 tile loop where the CPU has it: wide tiles, several key
// blocks, and heads as strided column blocks of one packed matrix.
TEST(FusedEngine, PlainSoftmaxOnWideTilesEqualsReference) {
  Rng rng(11);
  const Index L = 300, S = 517, E = 3 * 40;
  Matrix<float> qkv(std::max(L, S), E);
  init::normal(qkv, rng);
  for (const FusedTiling& tiling :
       {FusedTiling{128, 256}, FusedTiling{100, 96}, FusedTiling{33, 7}}) {
    SCOPED_TRACE(::testing::Message() << tiling.query_tile << " x " << tiling.key_block);
    const HeadInputs<float> head{0, 0, qkv.block(0, 0, L, 40), qkv.block(0, 40, S, 40),
                                 qkv.block(0, 80, S, 37)};
    const AttentionKernel<float> kernel{dot_product_range(0.3f)};
    Matrix<float> weights(L, S), expected(L, 37);
    Matrix<float> out = Matrix<float>::Constant(L, 37, std::nanf(""));  // unwritten entries fail
    reference_attention<float>(head, kernel, weights, expected);
    fused_attention<float>(head, kernel, out, {tiling, {2}});
    ATTNLENS_EXPECT_CLOSE(out, expected, 1e-5);
  }
}

// Without a mask every key reaches every query: a NaN or Inf in the values or keys reaches the
// outputs as in the reference engine (the fast path hands such heads to the portable one).
TEST(FusedEngine, PlainSoftmaxWithNonFiniteInputsMatchesReference) {
  const float inf = std::numeric_limits<float>::infinity();
  // Query tiles of 8 and key blocks of 16: a bad query spoils one tile (rows 8-15), a bad key
  // or value in the second block is met after the first block has been accumulated.
  for (int where = 0; where < 6; ++where) {
    auto h = testing::random_head<float>(20, 30, 8, 5, 4);
    if (where == 0) h.v(7, 2) = std::nanf("");
    if (where == 1) h.v(3, 0) = inf;
    if (where == 2) h.k(5, 1) = inf;
    if (where == 3) h.q(11, 3) = -inf;
    if (where == 4) h.k(25, 0) = std::nanf("");
    if (where == 5) h.v(29, 4) = -inf;
    const HeadInputs<float> head{0, 0, h.q, h.k, h.v};
    const AttentionKernel<float> kernel{dot_product_range(0.5f)};
    Matrix<float> weights(20, 30), expected(20, 5), out(20, 5);
    reference_attention<float>(head, kernel, weights, expected);
    fused_attention<float>(head, kernel, out, {{8, 16}, {1}});
    for (Index n = 0; n < out.size(); ++n) {
      const float x = out.data()[n], y = expected.data()[n];
      if (std::isfinite(y))
        EXPECT_NEAR(x, y, 1e-5f) << "case " << where << ", entry " << n;
      else
        EXPECT_FALSE(std::isfinite(x)) << "case " << where << ", entry " << n;
    }
  }
}

TEST(FusedEngine, RejectsBadKernelsAndShapes) {
  const auto h = testing::random_head<float>(4, 5, 3, 2, 9);
  Matrix<float> out(4, 2);
  AttentionKernel<float> boosted{dot_product_range(1.0f)};
  boosted.boost = 1;
  EXPECT_THROW(fused_attention<float>({0, 0, h.q, h.k, h.v}, boosted, out), ShapeError);
  AttentionKernel<float> window{dot_product_range(1.0f)};
  window.window = {1, Grid2d{2, 2}};
  EXPECT_THROW(fused_attention<float>({0, 0, h.q, h.k, h.v}, window, out), ShapeError);
  Matrix<float> wrong(4, 3);
  EXPECT_THROW(fused_attention<float>({0, 0, h.q, h.k, h.v}, {dot_product_range(1.0f)}, wrong),
               ShapeError);
  EXPECT_THROW(
      fused_attention<float>({0, 0, h.q, h.k, h.v}, {dot_product_range(1.0f)}, out, {{0, 4}, {}}),
      ArgumentError);
}

TEST(FusedEngine, MultiHeadFusedEqualsReferenceWithRopeAndThreads) {
  MultiHeadAttentionOptions options{48, 6};
  Rng rng(10);
  MultiHeadAttention<float> mha(options, rng);
  init::normal(mha.in_proj_bias, rng);
  mha.query_key_transforms.push_back(std::make_shared<RotaryEmbedding<float>>(RopeOptions{8}));
  Tensor<float> x({3, 19, 48});
  MatrixMap<float> tokens(x.data(), 3 * 19, 48);
  init::normal(tokens, rng);
  AttentionMask<float> mask;
  mask.key_lengths = std::vector<Index>{19, 7, 1};
  for (int threads : {1, 2}) {
    MultiHeadForwardOptions reference, fused;
    reference.engine = AttentionEngine::reference;
    fused.engine = AttentionEngine::fused;
    fused.tiling = {5, 6};
    reference.parallel.threads = fused.parallel.threads = threads;
    const auto expected = mha.forward(x, mask, reference).output;
    const auto actual = mha.forward(x, mask, fused).output;
    for (Index b = 0; b < 3; ++b)
      ATTNLENS_EXPECT_CLOSE(actual.matrix({b}), expected.matrix({b}), 1e-5);
  }
  MultiHeadForwardOptions fused_with_weights;
  fused_with_weights.engine = AttentionEngine::fused;
  fused_with_weights.weights = AttentionWeights::averaged;
  EXPECT_THROW(mha.forward(x, mask, fused_with_weights), ArgumentError);
}

// The log of each row's denominator, as a backward pass reads it: A_ij = w_j exp(s_ij - lse_i)
// is the reference engine's A, with key weights, epsilon and a causal mask whose first row of a
// length-limited sequence has no keys at all; the output is unchanged by asking for it.
TEST(FusedEngine, RowLogSumExpRecomputesTheReferenceWeights) {
  const Index L = 23, d = 5;
  const auto h = testing::random_head<double>(L, L, d, 4, 91);
  Rng rng(92);
  Vector<double> u(L), w(L);
  for (Index j = 0; j < L; ++j)
    u[j] = rng.uniform<double>(0.2, 1.0), w[j] = rng.uniform<double>(0.2, 1.0);
  AttentionMask<double> mask;
  mask.causal = true;
  mask.keep = Tensor<std::uint8_t>({L, L});
  for (Index i = 0; i < L * L; ++i) mask.keep->data()[i] = i >= L ? 1 : 0;  // row 0: no keys
  const BoundMask<double> bound(mask, ScoreShape{1, 1, L, L, d});
  AttentionKernel<double> kernel{dot_product_range(0.4), nullptr, &bound};
  kernel.epsilon = 1e-3;
  HeadInputs<double> head{0, 0, h.q, h.k, h.v, w.data(), u.data()};

  Matrix<double> weights(L, L), expected(L, 4);
  reference_attention<double>(head, kernel, weights, expected);
  Matrix<double> scores(L, L);
  SerialGemm<double> gemm(L, L, d);
  tile_scores<double>(kernel, {0, 0, 0, 0}, h.q, h.k, scores, gemm);
  for (const FusedTiling& tiling : k_tilings) {
    Matrix<double> out(L, 4);
    Vector<double> lse(L);
    fused_attention_heads<double>(
        1, [&](Index) { return head; }, [&](Index) { return MatrixRef<double>(out); },
        [&](Index) { return lse.data(); }, kernel, FusedOptions{tiling, {}});
    ATTNLENS_EXPECT_CLOSE(out, expected, 1e-12);
    EXPECT_EQ(lse[0], -std::numeric_limits<double>::infinity());
    Matrix<double> recomputed = Matrix<double>::Zero(L, L);
    for (Index i = 1; i < L; ++i)
      for (Index j = 0; j <= i; ++j) recomputed(i, j) = w[j] * std::exp(scores(i, j) - lse[i]);
    ATTNLENS_EXPECT_CLOSE(recomputed, weights, 1e-12);
  }
}

// The plain-softmax plan in float, which on AVX-512 takes the specialized tile: its
// log-sum-exps recompute the reference weights as the portable step's do.
TEST(FusedEngine, SoftmaxTileWritesTheRowLogSumExps) {
  const Index L = 75, d = 16;
  const auto h = testing::random_head<float>(L, L, d, 16, 93);
  const AttentionKernel<float> kernel{dot_product_range(0.25f)};
  const HeadInputs<float> head{0, 0, h.q, h.k, h.v};
  Matrix<float> weights(L, L), expected(L, 16);
  reference_attention<float>(head, kernel, weights, expected);
  Matrix<float> scores(L, L);
  SerialGemm<float> gemm(L, L, d);
  tile_scores<float>(kernel, {0, 0, 0, 0}, h.q, h.k, scores, gemm);
  for (const FusedTiling& tiling : k_tilings) {
    Matrix<float> out(L, 16);
    Vector<float> lse = Vector<float>::Constant(L, std::numeric_limits<float>::quiet_NaN());
    fused_attention_heads<float>(
        1, [&](Index) { return head; }, [&](Index) { return MatrixRef<float>(out); },
        [&](Index) { return lse.data(); }, kernel, FusedOptions{tiling, {}});
    ATTNLENS_EXPECT_CLOSE(out, expected, 1e-5);
    const Matrix<float> recomputed = (scores.array().colwise() - lse.array()).exp().matrix();
    ATTNLENS_EXPECT_CLOSE(recomputed, weights, 1e-6);
  }
}

}  // namespace
}  // namespace attnlens
