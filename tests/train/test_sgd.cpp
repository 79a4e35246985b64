// Sgd against torch.optim.SGD on the optim fixtures (plain, momentum, Nesterov, weight decay,
// dampening with the default groups, one-cycle lr and momentum), exact small cases of the
// update rule, and bad options and arguments.
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/train/sgd.hpp"
#include "support/expect_error.hpp"
#include "support/optim_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T>
void check_sgd_against_pytorch() {
  double parameter_error = 0, state_error = 0, first_step_error = 0;
  const int cases = testing::check_optimizer_fixture<T, Sgd<T>>(
      "sgd", testing::fixture_sgd_options, parameter_error, state_error, first_step_error);
  EXPECT_EQ(cases, 6);
  testing::report_error(std::string("sgd parameters ") + (sizeof(T) == 4 ? "f32" : "f64"),
                        parameter_error);
  // Issue 15's "one SGD step == torch.optim (float 1e-6)" is step 0 of the fixture, checked
  // with the others; reported on its own (later steps also carry the earlier steps' rounding).
  testing::report_error(
      std::string("sgd parameters, first step ") + (sizeof(T) == 4 ? "f32" : "f64"),
      first_step_error);
  testing::report_error(std::string("sgd momentum_buffer ") + (sizeof(T) == 4 ? "f32" : "f64"),
                        state_error);
}

TEST(Sgd, MatchesTorchOptimFloat) { check_sgd_against_pytorch<float>(); }
TEST(Sgd, MatchesTorchOptimDouble) { check_sgd_against_pytorch<double>(); }

// One parameter of two entries, stepped by hand: the rule's terms one at a time.
struct SgdProbe {
  Vector<double> p = Vector<double>::Constant(2, 1.0);
  Vector<double> g = Vector<double>::Constant(2, 0.5);
  std::vector<NamedParameter<double>> parameters() { return {{"w", p.data(), 2, {2}}}; }
  std::vector<NamedParameter<double>> gradients() { return {{"w", g.data(), 2, {2}}}; }
};

TEST(Sgd, ExactSteps) {
  SgdOptions o;
  o.lr = 0.1;
  o.momentum = 0.5;
  o.dampening = 0.2;
  o.weight_decay = 0.1;
  o.no_weight_decay = {};
  SgdProbe probe;
  Sgd<double> sgd(o);
  sgd.step(probe.parameters(), probe.gradients());
  // d = 0.5 + 0.1 * 1 = 0.6; b = d on the first step (no dampening); p = 1 - 0.1 * 0.6.
  EXPECT_DOUBLE_EQ(probe.p[0], 0.94);
  sgd.step(probe.parameters(), probe.gradients());
  // d = 0.5 + 0.1 * 0.94 = 0.594; b = 0.5 * 0.6 + 0.8 * 0.594 = 0.7752; p = 0.94 - 0.07752.
  EXPECT_DOUBLE_EQ(probe.p[1], 0.94 - 0.07752);
  ASSERT_EQ(sgd.state().tensors.size(), 1u);
  EXPECT_DOUBLE_EQ(sgd.state().tensors[0].value.data()[0], 0.7752);
  EXPECT_EQ(sgd.state().tensors[0].name(), "w.momentum_buffer");
  EXPECT_EQ(sgd.steps(), 2);
}

TEST(Sgd, NesterovAndNoMomentumBuffer) {
  SgdOptions o;
  o.lr = 1;
  o.momentum = 0.5;
  o.nesterov = true;
  SgdProbe probe;
  Sgd<double> sgd(o);
  sgd.step(probe.parameters(), probe.gradients());
  EXPECT_DOUBLE_EQ(probe.p[0], 1 - (0.5 + 0.5 * 0.5));  // d + momentum b, b = d

  o.momentum = 0;
  o.nesterov = false;
  Sgd<double> plain(o);
  SgdProbe other;
  plain.step(other.parameters(), other.gradients());
  EXPECT_DOUBLE_EQ(other.p[0], 0.5);
  EXPECT_TRUE(plain.state().tensors.empty());  // torch.optim.SGD keeps none without momentum
}

TEST(Sgd, MomentumSwitchedOnLaterStartsItsBuffer) {
  SgdOptions o;
  o.lr = 1;
  SgdProbe probe;
  Sgd<double> sgd(o);
  sgd.step(probe.parameters(), probe.gradients());  // p = 0.5
  o.momentum = 0.9;
  o.dampening = 0.5;
  sgd.set_options(o);
  sgd.step(probe.parameters(), probe.gradients());  // b = d (no dampening on a new buffer)
  EXPECT_DOUBLE_EQ(probe.p[0], 0.0);
  EXPECT_EQ(sgd.state().tensors.size(), 1u);
}

TEST(Sgd, StepsAModuleFromItsGradientModule) {
  EncoderOptions o;
  o.layer = {8, 2, 16};
  o.num_layers = 1;
  Rng rng(3);
  TransformerEncoder<float> encoder(o, rng);
  TransformerEncoder<float> gradient = zeros_like(encoder);
  for (const NamedParameter<float>& p : named_parameters(gradient))
    std::fill(p.data, p.data + p.size, 1.0f);
  const TransformerEncoder<float> before = encoder;
  SgdOptions so;
  so.lr = 0.25;
  Sgd<float> sgd(so);
  sgd.step(encoder, gradient);
  EXPECT_EQ(encoder.layers[0].linear1.weight,
            (before.layers[0].linear1.weight.array() - 0.25f).matrix());
  EXPECT_EQ(encoder.layers[0].norm2.bias, (before.layers[0].norm2.bias.array() - 0.25f).matrix());
}

TEST(Sgd, RejectsBadOptions) {
  const auto options = [](auto change) {
    SgdOptions o;
    o.lr = 0.1;
    change(o);
    return o;
  };
  expect_error_naming<ArgumentError>([] { Sgd<float> sgd(SgdOptions{}); }, "SgdOptions::lr");
  expect_error_naming<ArgumentError>(
      [&] { Sgd<float> sgd(options([](SgdOptions& o) { o.lr = -0.1; })); }, "SgdOptions::lr");
  expect_error_naming<ArgumentError>(
      [&] { Sgd<float> sgd(options([](SgdOptions& o) { o.momentum = -0.5; })); },
      "SgdOptions::momentum");
  expect_error_naming<ArgumentError>(
      [&] { Sgd<float> sgd(options([](SgdOptions& o) { o.dampening = 1.5; })); },
      "SgdOptions::dampening");
  expect_error_naming<ArgumentError>(
      [&] {
        Sgd<float> sgd(options(
            [](SgdOptions& o) { o.weight_decay = std::numeric_limits<double>::infinity(); }));
      },
      "SgdOptions::weight_decay");
  expect_error_naming<ArgumentError>(
      [&] { Sgd<float> sgd(options([](SgdOptions& o) { o.nesterov = true; })); },
      "SgdOptions::nesterov");
  expect_error_naming<ArgumentError>(
      [&] {
        Sgd<float> sgd(options([](SgdOptions& o) {
          o.momentum = 0.9;
          o.dampening = 0.1;
          o.nesterov = true;
        }));
      },
      "dampening 0.1");
  expect_error_naming<ArgumentError>(
      [&] { Sgd<float> sgd(options([](SgdOptions& o) { o.no_weight_decay = {"a..b"}; })); },
      "SgdOptions::no_weight_decay[0]");
  Sgd<float> sgd(options([](SgdOptions&) {}));
  expect_error_naming<ArgumentError>([&] { sgd.set_learning_rate(-1); }, "SgdOptions::lr");
  EXPECT_EQ(sgd.options().lr, 0.1);  // unchanged by the rejected call
}

TEST(Sgd, RejectsMismatchedGradientsAndParameters) {
  SgdOptions o;
  o.lr = 0.1;
  Vector<float> a = Vector<float>::Ones(3), b = Vector<float>::Ones(4), ga = a, gb = b;
  const std::vector<NamedParameter<float>> params{{"a", a.data(), 3, {3}}, {"b", b.data(), 4, {4}}};
  Sgd<float> sgd(o);
  // A gradient list of another module: names, sizes or count differ.
  expect_error_naming<ShapeError>(
      [&] {
        sgd.step(params, {{"a", ga.data(), 3, {3}}, {"c", gb.data(), 4, {4}}});
      },
      "'c'");
  expect_error_naming<ShapeError>(
      [&] {
        sgd.step(params, {{"a", ga.data(), 3, {3}}, {"b", gb.data(), 3, {3}}});
      },
      "'b' with 4 entries");
  expect_error_naming<ShapeError>(
      [&] {
        sgd.step(params, {{"a", ga.data(), 3, {3}}});
      },
      "2 parameters");
  // The module passed as its own gradient.
  expect_error_naming<ArgumentError>([&] { sgd.step(params, params); }, "zeros_like");
  EXPECT_EQ(a, Vector<float>::Ones(3));  // nothing stepped
  EXPECT_EQ(sgd.steps(), 0);

  const std::vector<NamedParameter<float>> grads{{"a", ga.data(), 3, {3}},
                                                 {"b", gb.data(), 4, {4}}};
  sgd.step(params, grads);
  // A later step with other parameters than the first.
  Vector<float> c = Vector<float>::Ones(5), gc = c;
  expect_error_naming<ShapeError>(
      [&] {
        sgd.step({{"a", a.data(), 3, {3}}, {"b", c.data(), 5, {5}}},
                 {{"a", ga.data(), 3, {3}}, {"b", gc.data(), 5, {5}}});
      },
      "first step");
  // Two parameters under one name.
  Sgd<float> other(o);
  expect_error_naming<ArgumentError>(
      [&] {
        other.step({{"a", a.data(), 3, {3}}, {"a", b.data(), 4, {4}}},
                   {{"a", ga.data(), 3, {3}}, {"a", gb.data(), 4, {4}}});
      },
      "'a' twice");
}

}  // namespace
}  // namespace attnlens
