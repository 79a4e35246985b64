// clip_gradient_norm against torch.nn.utils.clip_grad_norm_ (optim_clip fixtures: clipped, not
// clipped, max_norm 0), on a module's gradient, with non-finite norms, and bad max_norm.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "attnlens/blocks/encoder.hpp"
#include "attnlens/core/init.hpp"
#include "attnlens/train/clip_gradient.hpp"
#include "support/expect_error.hpp"
#include "support/optim_fixtures.hpp"

namespace attnlens {
namespace {

using testing::expect_error_naming;

template <class T>
void check_clip_against_pytorch() {
  const io::SafeTensors file = testing::load_fixture(
      std::string("optim_clip_") + (std::is_same_v<T, float> ? "f32" : "f64") + ".safetensors");
  double norm_error = 0, gradient_error = 0;
  int cases = 0;
  for (const nlohmann::json& c : testing::fixture_cases(file)) {
    const std::string name = c["name"];
    SCOPED_TRACE(name);
    ++cases;
    const std::vector<std::string> names = c["parameters"];
    testing::ParameterSet<T> grads = testing::read_parameter_set<T>(file, name + ".grad.", names);
    const double total = clip_gradient_norm(grads.list(), c["max_norm"].get<double>());
    const double expected = file.get<T>(name + ".total_norm").data()[0];
    norm_error = std::max(norm_error, std::fabs(total - expected) / expected);
    EXPECT_LE(std::fabs(total - expected) / expected, testing::optimizer_tolerance<T>());
    for (const std::string& p : names) {
      const Tensor<T> clipped = file.get<T>(name + ".clipped." + p);
      // max_norm 0 clips to exact zeros: the relative measure has no scale there.
      const double error = c["max_norm"] == 0.0
                               ? testing::max_abs_error(grads.tensors.at(p), clipped)
                               : testing::relative_error(grads.tensors.at(p), clipped);
      EXPECT_LE(error, testing::optimizer_tolerance<T>()) << p;
      gradient_error = std::max(gradient_error, error);
    }
  }
  EXPECT_EQ(cases, 3);
  const std::string type = std::is_same_v<T, float> ? "f32" : "f64";
  testing::report_error("clip total_norm " + type, norm_error);
  testing::report_error("clip gradients " + type, gradient_error);
}

TEST(ClipGradientNorm, MatchesTorchFloat) { check_clip_against_pytorch<float>(); }
TEST(ClipGradientNorm, MatchesTorchDouble) { check_clip_against_pytorch<double>(); }

TEST(ClipGradientNorm, ScalesAModuleGradientToMaxNorm) {
  EncoderOptions o;
  o.layer = {8, 2, 16};
  Rng rng(5);
  TransformerEncoder<double> encoder(o, rng);
  TransformerEncoder<double> gradient = encoder;  // any values: the encoder's own
  const double before = parameter_norm(gradient);
  ASSERT_GT(before, 2);
  EXPECT_EQ(clip_gradient_norm(gradient, 2.0), before);
  EXPECT_NEAR(parameter_norm(gradient), 2.0 * before / (before + 1e-6), 1e-12);
  const TransformerEncoder<double> clipped = gradient;
  EXPECT_NEAR(clip_gradient_norm(gradient, 3.0), 2.0, 1e-6);  // below max_norm: unchanged
  EXPECT_EQ(gradient.layers[0].linear1.weight, clipped.layers[0].linear1.weight);
}

TEST(ClipGradientNorm, NonFiniteNormScalesAsPyTorch) {
  // error_if_nonfinite=False: an infinite gradient makes clip_coef 0 (inf * 0 = NaN there,
  // 0 elsewhere); a NaN makes every entry NaN. The returned norm says so.
  Vector<float> g(3);
  g << 1, std::numeric_limits<float>::infinity(), -2;
  std::vector<NamedParameter<float>> list{{"g", g.data(), 3, {3}}};
  EXPECT_TRUE(std::isinf(clip_gradient_norm(list, 1.0)));
  EXPECT_EQ(g[0], 0.0f);
  EXPECT_TRUE(std::isnan(g[1]));
  g << 1, std::numeric_limits<float>::quiet_NaN(), -2;
  EXPECT_TRUE(std::isnan(clip_gradient_norm(list, 1.0)));
  EXPECT_TRUE(std::isnan(g[0]));
}

TEST(ClipGradientNorm, RejectsBadMaxNorm) {
  Vector<float> g = Vector<float>::Ones(2);
  std::vector<NamedParameter<float>> list{{"g", g.data(), 2, {2}}};
  expect_error_naming<ArgumentError>([&] { clip_gradient_norm(list, -1.0); }, "max_norm");
  expect_error_naming<ArgumentError>(
      [&] { clip_gradient_norm(list, std::numeric_limits<double>::quiet_NaN()); }, "max_norm");
  EXPECT_EQ(g, Vector<float>::Ones(2));
  EXPECT_EQ(clip_gradient_norm(list, std::numeric_limits<double>::infinity()), std::sqrt(2.0));
}

}  // namespace
}  // namespace attnlens
