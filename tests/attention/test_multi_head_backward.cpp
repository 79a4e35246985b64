// MultiHeadAttention::backward against central finite differences in double (every input and
// every named parameter, those of attached factors and of the variant included), on both
// engines, with masks, factors, variants, boosting and interventions; and the fused backward
// against the reference backward.
#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "attnlens/attention/multi_head.hpp"
#include "attnlens/core/parameters.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/position/alibi.hpp"
#include "attnlens/position/cauchy.hpp"
#include "attnlens/position/learned_2d.hpp"
#include "attnlens/position/quadratic.hpp"
#include "attnlens/position/rope.hpp"
#include "attnlens/position/shaw.hpp"
#include "attnlens/position/t5.hpp"
#include "attnlens/position/transformer_xl.hpp"
#include "support/compare.hpp"
#include "support/fixtures.hpp"
#include "support/gradient_check.hpp"
#include "support/gradient_fixtures.hpp"
#include "support/mha_fixtures.hpp"

namespace attnlens {
namespace {

using testing::random_probe;

using testing::perturb_parameters;
using testing::random_normal_tensor;

struct Problem {
  Index batch = 2, queries = 5, keys = 5;
  bool self_attention = true;
  AttentionMask<double> mask = {};
  MultiHeadForwardOptions forward = {};
  StackValues<double> stack = {};
};

// Checks every gradient of one configuration against central differences of
// L = sum(probe (*) output), on the engine of problem.forward.
void expect_gradients_match_differences(MultiHeadAttention<double> mha, const Problem& problem,
                                        double tol = 1e-6) {
  const Index E = mha.embed_dim();
  Tensor<double> query = random_normal_tensor({problem.batch, problem.queries, E}, 11);
  Tensor<double> key = random_normal_tensor({problem.batch, problem.keys, mha.kdim()}, 12);
  Tensor<double> value = random_normal_tensor({problem.batch, problem.keys, mha.vdim()}, 13);
  const Matrix<double> probe = random_probe(problem.batch * problem.queries, E, 14);
  const auto run = [&](MultiHeadCache<double>* cache) {
    return problem.self_attention
               ? mha.forward(query, problem.mask, problem.forward, cache, problem.stack)
               : mha.forward(query, key, value, problem.mask, problem.forward, cache,
                             problem.stack);
  };
  const auto loss = [&] {
    const auto out = run(nullptr);
    return (ConstMatrixMap<double>(out.output.data(), probe.rows(), probe.cols()).array() *
            probe.array())
        .sum();
  };
  MultiHeadCache<double> cache;
  run(&cache);
  Tensor<double> doutput({problem.batch, problem.queries, E});
  MatrixMap<double>(doutput.data(), probe.rows(), probe.cols()) = probe;
  MultiHeadAttention<double> gradient = zeros_like(mha);
  const auto inputs = mha.backward(cache, doutput, gradient, {}, problem.stack);

  testing::expect_parameter_gradients(mha, gradient, loss, tol);
  EXPECT_GT(parameter_norm(gradient), 0.0);
  ATTNLENS_EXPECT_GRADIENT(loss, query.data(), query.size(), inputs.query.data(), tol);
  if (!problem.self_attention) {
    ATTNLENS_EXPECT_GRADIENT(loss, key.data(), key.size(), inputs.key.data(), tol);
    ATTNLENS_EXPECT_GRADIENT(loss, value.data(), value.size(), inputs.value.data(), tol);
  } else {
    EXPECT_EQ(inputs.key.size(), 0);
  }
}

MultiHeadForwardOptions engine(AttentionEngine which, FusedTiling tiling = {2, 3}) {
  MultiHeadForwardOptions options;
  options.engine = which;
  options.tiling = tiling;
  return options;
}

const AttentionEngine k_engines[] = {AttentionEngine::reference, AttentionEngine::fused};

TEST(MultiHeadBackward, SelfAttentionMatchesDifferences) {
  for (AttentionEngine which : k_engines) {
    SCOPED_TRACE(which == AttentionEngine::fused ? "fused" : "reference");
    MultiHeadAttention<double> mha({8, 2});
    perturb_parameters(mha, 1);
    Problem problem;
    problem.forward = engine(which);
    expect_gradients_match_differences(mha, problem);
  }
}

TEST(MultiHeadBackward, CrossAttentionWithKdimVdimNoBiasMatchesDifferences) {
  for (AttentionEngine which : k_engines) {
    MultiHeadAttentionOptions options{6, 3};
    options.kdim = 4;
    options.vdim = 5;
    options.bias = false;
    MultiHeadAttention<double> mha(options);
    perturb_parameters(mha, 2);
    Problem problem;
    problem.self_attention = false;
    problem.keys = 7;
    problem.forward = engine(which);
    expect_gradients_match_differences(mha, problem);
    // Packed weights with separate key and value tensors.
    MultiHeadAttention<double> packed({6, 3});
    perturb_parameters(packed, 3);
    expect_gradients_match_differences(packed, problem);
  }
}

TEST(MultiHeadBackward, MasksAndFullyMaskedRowsMatchDifferences) {
  for (AttentionEngine which : k_engines) {
    MultiHeadAttention<double> mha({8, 2});
    perturb_parameters(mha, 4);
    Problem problem;
    problem.forward = engine(which);
    problem.mask.causal = true;
    problem.mask.key_lengths = std::vector<Index>{5, 3};
    Tensor<double> bias = random_normal_tensor({1, 2, 5, 5}, 5);
    bias.data()[2 * 5 + 1] = -std::numeric_limits<double>::infinity();
    problem.mask.bias = bias;
    // Row 0 of sequence 1 keeps no key: its gradient is 0, never NaN.
    Tensor<std::uint8_t> keep({2, 1, 5, 5});
    for (auto& v : keep.storage()) v = 1;
    for (Index j = 0; j < 5; ++j) keep.data()[25 + j] = 0;
    problem.mask.keep = keep;
    expect_gradients_match_differences(mha, problem);
  }
}

TEST(MultiHeadBackward, PositionFactorsMatchDifferences) {
  const Index E = 8, H = 2, d = 4;
  const auto with = [&](auto&& attach) {
    MultiHeadAttention<double> mha({E, H});
    attach(mha);
    perturb_parameters(mha, 6);
    return mha;
  };
  const Grid2d grid{2, 3, 1};  // 1 + 2 x 3 = 7 tokens
  std::vector<std::pair<std::string, MultiHeadAttention<double>>> cases;
  cases.emplace_back("alibi", with([&](auto& m) {
                       m.score_terms.push_back(std::make_shared<Alibi<double>>(AlibiOptions{H}));
                     }));
  cases.emplace_back(
      "t5", with([&](auto& m) {
        m.score_terms.push_back(std::make_shared<T5RelativeBias<double>>(T5BiasOptions{H, 8, 6}));
      }));
  cases.emplace_back(
      "shaw", with([&](auto& m) {
        auto shaw = std::make_shared<ShawRelativePosition<double>>(ShawOptions{d, 2});
        m.score_terms.push_back(shaw);
        m.value_terms.push_back(shaw);
      }));
  cases.emplace_back(
      "transformer_xl", with([&](auto& m) {
        m.score_terms.push_back(
            std::make_shared<TransformerXlRelativePosition<double>>(TransformerXlOptions{H, d, 6}));
      }));
  for (RopePairing pairing : {RopePairing::interleaved, RopePairing::half})
    cases.emplace_back("rope", with([&](auto& m) {
                         m.query_key_transforms.push_back(std::make_shared<RotaryEmbedding<double>>(
                             RopeOptions{d, 100.0, pairing}));
                       }));
  cases.emplace_back(
      "cauchy", with([&](auto& m) {
        m.score_terms.push_back(std::make_shared<CauchyDistance<double>>(CauchyOptions{H, 2.0}));
      }));
  cases.emplace_back("quadratic", with([&](auto& m) {
                       m.score_terms.push_back(std::make_shared<QuadraticEncoding<double>>(
                           QuadraticEncodingOptions{H, grid}));
                     }));
  cases.emplace_back(
      "quadratic_generalized", with([&](auto& m) {
        m.score_terms.push_back(std::make_shared<GeneralizedQuadraticEncoding<double>>(
            QuadraticEncodingOptions{H, grid}));
      }));
  cases.emplace_back("learned_2d", with([&](auto& m) {
                       m.score_terms.push_back(std::make_shared<LearnedRelative2d<double>>(
                           LearnedRelative2dOptions{H, 3, 3, grid}));
                     }));
  for (auto& [name, mha] : cases)
    for (AttentionEngine which : k_engines) {
      SCOPED_TRACE(name + (which == AttentionEngine::fused ? " fused" : " reference"));
      Problem problem;
      problem.queries = problem.keys = 7;
      problem.forward = engine(which);
      problem.mask.key_lengths = std::vector<Index>{7, 5};
      expect_gradients_match_differences(mha, problem);
    }
}

TEST(MultiHeadBackward, VariantsMatchDifferences) {
  const Index E = 8, H = 2, L = 6, B = 2;
  const Matrix<double> first = random_probe(B * L, E, 21), previous = random_probe(B * L, E, 22);
  struct Case {
    std::string name;
    AttentionVariantOptions variant;
    bool needs_stack = false;
  };
  std::vector<Case> cases;
  const auto add = [&](std::string name, AttentionVariantType type, auto&& edit) {
    Case c{std::move(name), {}, false};
    c.variant.type = type;
    edit(c);
    cases.push_back(c);
  };
  const auto none = [](Case&) {};
  add("twicing", AttentionVariantType::softmax, [](Case& c) { c.variant.boost = 1; });
  add("boost3", AttentionVariantType::softmax, [](Case& c) { c.variant.boost = 3; });
  add("bilateral_gaussian", AttentionVariantType::bilateral,
      [](Case& c) { c.variant.sigma_init = 2.0; });
  add("bilateral_laplacian_grid", AttentionVariantType::bilateral, [](Case& c) {
    c.variant.domain.type = DistanceKernelType::laplacian;
    c.variant.domain.grid = Grid2d{2, 3, 0};
  });
  add("kde", AttentionVariantType::kde, none);
  add("robust_kde", AttentionVariantType::robust_kde, [](Case& c) { c.variant.huber_a = 0.05; });
  add("fourier", AttentionVariantType::fourier, none);
  add("neutreno", AttentionVariantType::neutreno, [](Case& c) { c.needs_stack = true; });
  add("neutreno_boost", AttentionVariantType::neutreno, [](Case& c) {
    c.needs_stack = true;
    c.variant.boost = 1;
  });
  for (const Case& c : cases)
    for (AttentionEngine which : k_engines) {
      SCOPED_TRACE(c.name + (which == AttentionEngine::fused ? " fused" : " reference"));
      MultiHeadAttentionOptions options{E, H};
      options.variant = c.variant;
      MultiHeadAttention<double> mha(options);
      perturb_parameters(mha, 7);
      Problem problem;
      problem.batch = B;
      problem.queries = problem.keys = L;
      problem.forward = engine(which);
      problem.mask.key_lengths = std::vector<Index>{6, 4};
      if (c.needs_stack) problem.stack = {&first, &previous};
      expect_gradients_match_differences(mha, problem);
    }
}

// Elliptical attention passes no gradient through its metric m (docs/math.md section 2.8): its
// gradients are those of softmax attention with the same m as a fixed query transform, which
// central differences check (they would see m move with the values).
TEST(MultiHeadBackward, EllipticalIsSoftmaxWithAFixedMetric) {
  const Index B = 2, L = 6, E = 8, H = 2;
  const Matrix<double> first = random_probe(B * L, E, 21), previous = random_probe(B * L, E, 22);
  const StackValues<double> stack{&first, &previous};
  MultiHeadAttentionOptions options{E, H};
  options.variant.type = AttentionVariantType::elliptical;
  MultiHeadAttention<double> elliptical(options);
  perturb_parameters(elliptical, 7);
  AttentionMask<double> mask;
  mask.key_lengths = std::vector<Index>{6, 4};
  const Tensor<double> x = random_normal_tensor({B, L, E}, 11);
  Tensor<double> doutput = random_normal_tensor({B, L, E}, 14);
  for (AttentionEngine which : k_engines) {
    MultiHeadCache<double> cache;
    elliptical.forward(x, mask, engine(which), &cache, stack);
    ASSERT_EQ(cache.plan.transforms.size(), 1u);
    const auto& metric = dynamic_cast<const QueryMetric<double>&>(*cache.plan.transforms[0]);
    MultiHeadAttention<double> gradient = zeros_like(elliptical);
    const auto inputs = elliptical.backward(cache, doutput, gradient, {}, stack);

    MultiHeadAttention<double> fixed({E, H});
    for_each_parameter(fixed, "", [&](const std::string& name, auto& p, const Shape& = {}) {
      for (const NamedParameter<double>& q : named_parameters(elliptical))
        if (q.name == name) std::copy(q.data, q.data + q.size, p.data());
    });
    fixed.query_key_transforms.push_back(std::make_shared<QueryMetric<double>>(metric.metric, H));
    MultiHeadCache<double> fixed_cache;
    fixed.forward(x, mask, engine(which), &fixed_cache);
    MultiHeadAttention<double> fixed_gradient = zeros_like(fixed);
    const auto fixed_inputs = fixed.backward(fixed_cache, doutput, fixed_gradient);
    ATTNLENS_EXPECT_CLOSE(inputs.query, fixed_inputs.query, 1e-12);
    ATTNLENS_EXPECT_CLOSE(gradient.in_proj_weight, fixed_gradient.in_proj_weight, 1e-12);
    ATTNLENS_EXPECT_CLOSE(gradient.out_proj.weight, fixed_gradient.out_proj.weight, 1e-12);

    Problem problem;
    problem.batch = B;
    problem.queries = problem.keys = L;
    problem.forward = engine(which);
    problem.mask = mask;
    expect_gradients_match_differences(fixed, problem);
  }
}

// NeuTRENO's term lambda (V^0 - V) passes a gradient to the first layer's values.
TEST(MultiHeadBackward, NeutrenoGradientReachesTheFirstValues) {
  MultiHeadAttentionOptions options{8, 2};
  options.variant.type = AttentionVariantType::neutreno;
  MultiHeadAttention<double> mha(options);
  perturb_parameters(mha, 8);
  Matrix<double> first = random_probe(10, 8, 23);
  const Tensor<double> x = random_normal_tensor({2, 5, 8}, 24);
  const Matrix<double> probe = random_probe(10, 8, 25);
  const auto loss = [&] {
    const auto out = mha.forward(x, {}, {}, nullptr, {&first, nullptr});
    return (ConstMatrixMap<double>(out.output.data(), 10, 8).array() * probe.array()).sum();
  };
  MultiHeadCache<double> cache;
  mha.forward(x, {}, {}, &cache, {&first, nullptr});
  Tensor<double> doutput({2, 5, 8});
  MatrixMap<double>(doutput.data(), 10, 8) = probe;
  MultiHeadAttention<double> gradient = zeros_like(mha);
  const auto inputs = mha.backward(cache, doutput, gradient, {}, {&first, nullptr});
  ASSERT_EQ(inputs.first_values.rows(), 10);
  ATTNLENS_EXPECT_GRADIENT(loss, first.data(), first.size(), inputs.first_values.data(), 1e-6);
}

// head_scales multiplies A_h after normalization; dL/dscale_h = sum_ij dL/dA'_h (*) A_h, with
// A' = scale A the probabilities the output saw and dL/dA' what backward returns.
TEST(MultiHeadBackward, InterventionsAndAttentionGradients) {
  MultiHeadAttention<double> mha({8, 2});
  perturb_parameters(mha, 9);
  const Tensor<double> x = random_normal_tensor({2, 5, 8}, 26);
  const Matrix<double> probe = random_probe(10, 8, 27);
  for (AttentionEngine which : k_engines) {
    MultiHeadForwardOptions forward = engine(which);
    forward.head_scales = {0.7, 0.0};  // head 1 pruned
    Problem problem;
    problem.forward = forward;
    expect_gradients_match_differences(mha, problem);

    const auto loss = [&] {
      const auto out = mha.forward(x, {}, forward);
      return (ConstMatrixMap<double>(out.output.data(), 10, 8).array() * probe.array()).sum();
    };
    MultiHeadCache<double> cache;
    mha.forward(x, {}, forward, &cache);
    Tensor<double> doutput({2, 5, 8});
    MatrixMap<double>(doutput.data(), 10, 8) = probe;
    MultiHeadAttention<double> gradient = zeros_like(mha);
    MultiHeadBackwardOptions backward;
    backward.attention_gradients = true;
    const auto inputs = mha.backward(cache, doutput, gradient, backward);
    ASSERT_EQ(inputs.attention.shape(), (Shape{2, 2, 5, 5}));
    // Unscaled maps from the reference engine.
    const auto maps = mha.forward(x, {}, {AttentionWeights::per_head, {}});
    for (Index h = 0; h < 2; ++h) {
      double analytic = 0;
      for (Index b = 0; b < 2; ++b)
        analytic +=
            (inputs.attention.matrix({b, h}).array() * maps.weights.matrix({b, h}).array()).sum();
      double scale = forward.head_scales[static_cast<std::size_t>(h)];
      std::function<double()> at_scale = [&] {
        forward.head_scales[static_cast<std::size_t>(h)] = scale;
        return loss();
      };
      EXPECT_TRUE(testing::gradient_close(
          "head scale", testing::check_gradient(at_scale, &scale, 1, &analytic), 1e-6));
      forward.head_scales[static_cast<std::size_t>(h)] = h == 0 ? 0.7 : 0.0;
    }
  }
}

// The fused backward (tiles, threads, key chunks) equals the reference backward.
TEST(MultiHeadBackward, FusedEqualsReference) {
  MultiHeadAttentionOptions options{16, 2};
  options.variant.boost = 1;
  MultiHeadAttention<double> mha(options);
  perturb_parameters(mha, 10);
  mha.score_terms.push_back(std::make_shared<Alibi<double>>(AlibiOptions{2}));
  const Tensor<double> x = random_normal_tensor({1, 37, 16}, 28);
  Tensor<double> doutput = random_normal_tensor({1, 37, 16}, 29);
  AttentionMask<double> mask;
  mask.causal = true;
  const auto gradients = [&](const MultiHeadForwardOptions& forward, int threads) {
    MultiHeadCache<double> cache;
    mha.forward(x, mask, forward, &cache);
    MultiHeadAttention<double> gradient = zeros_like(mha);
    MultiHeadBackwardOptions backward;
    backward.parallel.threads = threads;
    const auto inputs = mha.backward(cache, doutput, gradient, backward);
    return std::make_pair(inputs.query, gradient);
  };
  auto [reference_dx, reference] = gradients(engine(AttentionEngine::reference), 1);
  for (FusedTiling tiling : {FusedTiling{5, 7}, FusedTiling{16, 4}, FusedTiling{128, 256}})
    for (int threads : {1, 2}) {
      auto [dx, fused] = gradients(engine(AttentionEngine::fused, tiling), threads);
      ATTNLENS_EXPECT_CLOSE(dx, reference_dx, 1e-10);
      const auto a = named_parameters(fused), b = named_parameters(reference);
      for (std::size_t n = 0; n < a.size(); ++n)
        ATTNLENS_EXPECT_CLOSE(ConstMatrixMap<double>(a[n].data, 1, a[n].size),
                              ConstMatrixMap<double>(b[n].data, 1, b[n].size), 1e-10);
    }
}

// Every case of nn.MultiheadAttention's cases (tests/reference/oracles/gradients.py) against
// torch.autograd, on both engines: float 1e-4 relative (1e-5 absolute below 0.1), double 1e-9
// (1e-10 absolute).
template <class T>
void check_gradients_against_pytorch(const std::string& fixture) {
  const auto file = testing::load_fixture(fixture);
  const auto cases = testing::fixture_cases(file);
  ASSERT_GE(cases.size(), 22u) << fixture;
  for (const auto& c : cases)
    for (AttentionEngine which : k_engines) {
      const std::string name = c["name"], prefix = name + ".";
      SCOPED_TRACE(fixture + " case " + name +
                   (which == AttentionEngine::fused ? " fused" : " reference"));
      const auto mha = io::load_multi_head_attention<T>(file, prefix, c["num_heads"].get<Index>());
      const auto mask = testing::mha_case_mask<T>(file, prefix, c);
      const Tensor<T> query = file.get<T>(prefix + "query");
      const Tensor<T> key = file.get<T>(prefix + "key");
      const Tensor<T> value = file.get<T>(prefix + "value");
      const bool self_attention = c["self_attention"].get<bool>();
      MultiHeadForwardOptions forward;
      forward.engine = which;
      forward.tiling = {3, 4};
      MultiHeadCache<T> cache;
      const auto out = self_attention ? mha.forward(query, mask, forward, &cache)
                                      : mha.forward(query, key, value, mask, forward, &cache);
      ATTNLENS_EXPECT_CLOSE(out.output, file.get<T>(prefix + "output"),
                            testing::default_tolerance<T>());
      MultiHeadAttention<T> gradient = zeros_like(mha);
      const auto inputs = mha.backward(cache, file.get<T>(prefix + "grad_output"), gradient);
      // The fixture's input gradients, one token per row like MultiHeadInputGradients'.
      const auto expect_input = [&](const Matrix<T>& actual, const std::string& tensor) {
        const Tensor<T> expected = file.get<T>(prefix + tensor);
        ATTNLENS_EXPECT_GRADIENT_MATCHES(T, actual, testing::token_rows(expected));
      };
      if (self_attention) {
        expect_input(inputs.query, "grad.input");
      } else {
        expect_input(inputs.query, "grad.query");
        expect_input(inputs.key, "grad.key");
        expect_input(inputs.value, "grad.value");
      }
      testing::expect_parameter_gradients_match(file, prefix + "grad.", gradient);
    }
}

TEST(MultiHeadBackward, MatchesPyTorchAutogradFloat) {
  check_gradients_against_pytorch<float>("grad_mha_f32.safetensors");
}
TEST(MultiHeadBackward, MatchesPyTorchAutogradDouble) {
  check_gradients_against_pytorch<double>("grad_mha_f64.safetensors");
}

}  // namespace
}  // namespace attnlens
