// The Cauchy distance kernel (position/cauchy.hpp) and the registry entry that makes it
// reachable: its bias, nn.MultiheadAttention with the bias as attn_mask, a one-layer encoder
// read from config.json, and its limit (an infinite width is plain attention).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <limits>

#include "attnlens/io/model.hpp"
#include "attnlens/io/state_dict.hpp"
#include "attnlens/position/cauchy.hpp"
#include "attnlens/position/registry.hpp"
#include "support/compare.hpp"
#include "support/expect_error.hpp"
#include "support/fixtures.hpp"
#include "support/scalar_types.hpp"
#include "support/score_terms.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;

template <class T>
class CauchyTest : public ::testing::Test {};
TYPED_TEST_SUITE(CauchyTest, testing::Scalars, testing::ScalarName);

TYPED_TEST(CauchyTest, BiasMatchesTheFormulaTileByTile) {
  using T = TypeParam;
  const auto file = testing::load_fixture("cauchy.safetensors");
  CauchyDistance<T> term({3, 1.0});
  term.width = file.get<T>("bias.width").matrix().transpose();
  ATTNLENS_EXPECT_CLOSE(testing::term_bias<T>(term, 3, 7, 9), file.get<T>("bias.bias"),
                        testing::default_tolerance<T>());
}

// The module from the registry, its width set from the fixture: PyTorch's output with the bias
// as attn_mask, on both engines; an infinite width is plain attention.
TEST(Cauchy, MultiHeadAttentionMatchesPyTorchAndAnInfiniteWidthIsPlainAttention) {
  const auto file = testing::load_fixture("cauchy.safetensors");
  auto mha = io::load_multi_head_attention<double>(file, "mha.", 3);
  const MultiHeadAttention<double> plain = mha;
  PositionOptions o;
  o.type = position_type_from_name("cauchy");
  RelativePosition<double> position(o, 12, 3);
  position.as<CauchyDistance<double>>().width = file.get<double>("mha.width").matrix().transpose();
  position.attach(mha);
  const Tensor<double> x = file.get<double>("mha.x");
  for (const auto engine : {AttentionEngine::fused, AttentionEngine::reference}) {
    MultiHeadForwardOptions options;
    options.engine = engine;
    ATTNLENS_EXPECT_CLOSE(mha.forward(x, {}, options).output, file.get<double>("mha.output"),
                          1e-10);
  }
  EXPECT_GT(testing::max_abs_error(plain.forward(x).output, file.get<double>("mha.output")), 1e-3);
  position.as<CauchyDistance<double>>().width.setConstant(1e200);
  ATTNLENS_EXPECT_CLOSE(mha.forward(x).output, plain.forward(x).output, 1e-12);
}

// config.json {"position": {"type": "cauchy", "width": ...}} is written and read through the
// registry, and the encoder it describes reads layers.0.self_attn.width.
TEST(Cauchy, AnEncoderFromConfigJsonMatchesPyTorch) {
  const auto file = testing::load_fixture("cauchy.safetensors");
  io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16, Activation::relu, 1e-5, false, true};
  config.encoder.position.type = position_type_from_name("cauchy");
  config.encoder.position.extra["width"] = 2.5;
  const std::string text = io::encoder_config_json(config);
  EXPECT_NE(text.find("\"width\": 2.5"), std::string::npos) << text;

  const fs::path dir = fs::temp_directory_path() / "attnlens_cauchy_encoder";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << text;
  io::SafeTensorsWriter writer;
  const std::string prefix = "encoder.";
  for (const auto& name : file.names())
    if (name.rfind(prefix + "layers.", 0) == 0)
      writer.add(name.substr(prefix.size()), file.get<double>(name));
  writer.save((dir / "model.safetensors").string());
  const auto encoder = io::load_encoder_model<double>(dir.string());
  fs::remove_all(dir);
  EXPECT_EQ(encoder.layers[0].position.type().name(), std::string("cauchy"));
  ATTNLENS_EXPECT_CLOSE(encoder.forward(file.get<double>("encoder.x")).output,
                        file.get<double>("encoder.output"), 1e-10);
}

// A width whose 1 / s^2 overflows is the limit: each query keeps its own key (term 0, not
// 0 * inf = NaN) and no other.
TEST(Cauchy, ATinyWidthIsTheIdentityNotNaN) {
  CauchyDistance<float> term({2, 1e-30});
  const Tensor<float> bias = testing::term_bias<float>(term, 2, 5, 5);
  for (Index h = 0; h < 2; ++h)
    for (Index i = 0; i < 5; ++i)
      for (Index j = 0; j < 5; ++j)
        EXPECT_EQ(bias.matrix({h})(i, j), i == j ? 0.0f : -std::numeric_limits<float>::infinity());
}

TEST(Cauchy, BadWidthsAreNamed) {
  testing::expect_error_naming<ArgumentError>(
      [] {
        CauchyDistance<float>({2, 0.0});
      },
      "CauchyOptions::width");
  CauchyDistance<float> term({2, 1.0});
  testing::expect_error_naming<ShapeError>(
      [&] {
        term.check({1, 3, 4, 4, 2});
      },
      "CauchyDistance width");
  term.width[1] = -1.0f;
  testing::expect_error_naming<ArgumentError>(
      [&] {
        term.check({1, 2, 4, 4, 2});
      },
      "CauchyDistance width");
}

}  // namespace
}  // namespace attnlens
