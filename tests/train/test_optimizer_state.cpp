// Optimizer state: resuming is exact (N steps == k steps, state() into a fresh optimizer's
// load_state, N - k more steps, bit for bit, for SGD and AdamW in float and double), and
// load_state's checks (another optimizer, missing, unknown, repeated or misshapen tensors,
// negative second moments), which leave the optimizer as it was.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/train/adamw.hpp"
#include "attnlens/train/optimizer_state.hpp"
#include "attnlens/train/sgd.hpp"
#include "support/expect_error.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T>
TransformerEncoder<T> resume_encoder() {
  EncoderOptions o;
  o.layer = {8, 2, 16};
  o.num_layers = 2;
  o.final_norm = true;
  o.position.type = PositionType::t5;  // a table under the default no-decay rule
  Rng rng(11);
  return TransformerEncoder<T>(o, rng);
}

// A gradient that depends on the parameters (so a step that went astray changes every later
// one) and on the step: sin(3 p) + a per-step N(0, 0.1) term.
template <class T>
void synthetic_gradient(TransformerEncoder<T>& encoder, TransformerEncoder<T>& gradient,
                        std::uint64_t step) {
  Rng rng(1000 + step);
  const std::vector<NamedParameter<T>> p = named_parameters(encoder),
                                       g = named_parameters(gradient);
  for (std::size_t n = 0; n < p.size(); ++n)
    for (Index e = 0; e < p[n].size; ++e)
      g[n].data[e] = std::sin(T(3) * p[n].data[e]) + rng.normal<T>(T(0), T(0.1));
}

template <class T>
bool bitwise_equal(TransformerEncoder<T>& a, TransformerEncoder<T>& b) {
  const std::vector<NamedParameter<T>> x = named_parameters(a), y = named_parameters(b);
  if (x.size() != y.size()) return false;
  for (std::size_t n = 0; n < x.size(); ++n)
    if (x[n].size != y[n].size ||
        std::memcmp(x[n].data, y[n].data, sizeof(T) * static_cast<std::size_t>(x[n].size)) != 0)
      return false;
  return true;
}

template <class Optimizer, class T, class Options>
void check_resume(const Options& options) {
  constexpr int N = 12, k = 5;
  TransformerEncoder<T> straight = resume_encoder<T>(), gradient = zeros_like(straight);
  Optimizer uninterrupted(options);
  for (int s = 0; s < N; ++s) {
    synthetic_gradient(straight, gradient, s);
    uninterrupted.step(straight, gradient);
  }

  TransformerEncoder<T> resumed = resume_encoder<T>();
  OptimizerState<T> saved;
  {
    Optimizer first(options);
    for (int s = 0; s < k; ++s) {
      synthetic_gradient(resumed, gradient, s);
      first.step(resumed, gradient);
    }
    saved = first.state();
  }  // the state outlives its optimizer: it owns its tensors
  EXPECT_EQ(saved.step, k);
  EXPECT_FALSE(saved.tensors.empty());
  Optimizer second(options);
  second.load_state(saved, resumed);
  EXPECT_EQ(second.steps(), k);
  for (int s = k; s < N; ++s) {
    synthetic_gradient(resumed, gradient, s);
    second.step(resumed, gradient);
  }
  EXPECT_TRUE(bitwise_equal(straight, resumed));
  EXPECT_EQ(second.steps(), N);
  // The trajectory is sensitive: one step less is far off.
  TransformerEncoder<T> other = resume_encoder<T>();
  EXPECT_FALSE(bitwise_equal(straight, other));
}

template <class T>
void check_resume_both() {
  SgdOptions sgd;
  sgd.lr = 0.05;
  sgd.momentum = 0.9;
  sgd.nesterov = true;
  sgd.weight_decay = 0.01;
  check_resume<Sgd<T>, T>(sgd);
  AdamWOptions adam;
  adam.lr = 1e-2;
  adam.amsgrad = true;
  check_resume<AdamW<T>, T>(adam);
  adam.amsgrad = false;
  check_resume<AdamW<T>, T>(adam);
}

TEST(OptimizerState, ResumeIsBitwiseExactFloat) { check_resume_both<float>(); }
TEST(OptimizerState, ResumeIsBitwiseExactDouble) { check_resume_both<double>(); }

// A small list of two parameters and an AdamW state after one step.
struct StateProbe {
  Matrix<float> w = Matrix<float>::Constant(2, 3, 0.5f);
  Vector<float> b = Vector<float>::Constant(2, 0.1f);
  Matrix<float> gw = Matrix<float>::Constant(2, 3, 0.2f);
  Vector<float> gb = Vector<float>::Constant(2, -0.3f);
  std::vector<NamedParameter<float>> parameters() {
    return {{"fc.weight", w.data(), 6, {2, 3}}, {"fc.bias", b.data(), 2, {2}}};
  }
  std::vector<NamedParameter<float>> gradients() {
    return {{"fc.weight", gw.data(), 6, {2, 3}}, {"fc.bias", gb.data(), 2, {2}}};
  }
};

OptimizerState<float> adamw_state_after_a_step() {
  StateProbe probe;
  AdamW<float> adam;
  adam.step(probe.parameters(), probe.gradients());
  return adam.state();
}

TEST(OptimizerState, NamesShapesAndOrder) {
  const OptimizerState<float> state = adamw_state_after_a_step();
  ASSERT_EQ(state.tensors.size(), 4u);
  EXPECT_EQ(state.tensors[0].name(), "fc.weight.exp_avg");
  EXPECT_EQ(state.tensors[1].name(), "fc.weight.exp_avg_sq");
  EXPECT_EQ(state.tensors[2].name(), "fc.bias.exp_avg");
  EXPECT_EQ(state.tensors[0].value.shape(), (Shape{2, 3}));
  EXPECT_EQ(state.tensors[3].value.shape(), (Shape{2}));
  AdamW<float> fresh;
  EXPECT_TRUE(fresh.state().tensors.empty());  // torch.optim's state before a step: empty
  EXPECT_EQ(fresh.state().step, 0);
}

TEST(OptimizerState, LoadStateChecksAndLeavesTheOptimizerAlone) {
  const OptimizerState<float> good = adamw_state_after_a_step();
  StateProbe probe;
  AdamW<float> adam;
  adam.load_state(good, probe.parameters());  // fine
  EXPECT_EQ(adam.steps(), 1);

  const auto rejects = [&](auto error, OptimizerState<float> state, const std::string& word) {
    using Error = decltype(error);
    expect_error_naming<Error>([&] { adam.load_state(state, probe.parameters()); }, word);
    EXPECT_EQ(adam.steps(), 1);
    EXPECT_EQ(adam.state().tensors.size(), 4u);
  };
  OptimizerState<float> s = good;
  s.optimizer = "sgd";
  rejects(ArgumentError(""), s, "state.optimizer: expected \"adamw\", got \"sgd\"");
  s = good;
  s.tensors.erase(s.tensors.begin() + 1);
  rejects(ArgumentError(""), s, "'fc.weight.exp_avg_sq': expected for every parameter");
  s = good;
  s.tensors[2].parameter = "fc.other";
  rejects(ArgumentError(""), s, "'fc.other.exp_avg'");
  s = good;
  s.tensors[2].buffer = "momentum_buffer";
  rejects(ArgumentError(""), s, "a buffer named exp_avg, exp_avg_sq, max_exp_avg_sq");
  s = good;
  s.tensors.push_back(s.tensors[0]);
  rejects(ArgumentError(""), s, "expected one tensor, got two");
  s = good;
  s.tensors[0].value = Tensor<float>({3, 2});
  rejects(ShapeError(""), s,
          "'fc.weight.exp_avg': expected [2, 3] (6 entries), the shape of parameter 'fc.weight', "
          "got [3, 2] (6 entries)");
  s = good;
  s.tensors[3].value = Tensor<float>({5});
  rejects(ShapeError(""), s, "got [5] (5 entries)");
  s = good;
  s.tensors[1].value.data()[4] = -1;
  rejects(ArgumentError(""), s, "'fc.weight.exp_avg_sq' entry 4: expected a value >= 0");
  s = good;
  s.tensors.push_back({"fc.bias", "max_exp_avg_sq", s.tensors[3].value});
  rejects(ArgumentError(""), s, "AdamWOptions::amsgrad is false");
  s = good;
  s.step = 0;
  rejects(ArgumentError(""), s, "no buffers in a state of step 0");
  s = good;
  s.step = -3;
  rejects(ArgumentError(""), s, "state.step");
  // The module's parameters twice under one name.
  expect_error_naming<ArgumentError>(
      [&] {
        adam.load_state(good, {probe.parameters()[0], probe.parameters()[0]});
      },
      "'fc.weight' twice");

  AdamWOptions amsgrad;
  amsgrad.amsgrad = true;
  AdamW<float> other(amsgrad);
  expect_error_naming<ArgumentError>([&] { other.load_state(good, probe.parameters()); },
                                     "'fc.weight.max_exp_avg_sq': expected for every parameter");
  EXPECT_EQ(other.steps(), 0);
}

TEST(OptimizerState, SgdMomentumBuffersForAllOrNone) {
  StateProbe probe;
  SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.9;
  Sgd<float> sgd(o);
  sgd.step(probe.parameters(), probe.gradients());
  OptimizerState<float> state = sgd.state();
  ASSERT_EQ(state.tensors.size(), 2u);
  Sgd<float> fresh(o);
  state.tensors.pop_back();
  expect_error_naming<ArgumentError>([&] { fresh.load_state(state, probe.parameters()); },
                                     "'fc.bias.momentum_buffer': expected for every parameter "
                                     "or for none");
  state.tensors.clear();  // none: the next step starts the buffers from d, as torch.optim.SGD
  fresh.load_state(state, probe.parameters());
  EXPECT_EQ(fresh.steps(), 1);
  const Matrix<float> before = probe.w;
  fresh.step(probe.parameters(), probe.gradients());
  EXPECT_EQ(probe.w, (before.array() - 0.1f * 0.2f).matrix());
  expect_error_naming<ArgumentError>(
      [&] { fresh.load_state(adamw_state_after_a_step(), probe.parameters()); },
      "expected \"sgd\"");
}

}  // namespace
}  // namespace attnlens
