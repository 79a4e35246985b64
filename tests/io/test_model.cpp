// The model format (docs/model-format.md): save and load round trip, and every malformed
// config.json or model.safetensors named in the issue gives an IoError naming the problem.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "attnlens/io/model.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;
using testing::expect_error_naming;

io::EncoderModelConfig small_config() {
  io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16, Activation::gelu, 1e-5, true, true};
  config.encoder.num_layers = 2;
  config.encoder.final_norm = true;
  config.encoder.residual = {ResidualType::fidelity, {0.2, 0.4}};
  return config;
}

class Model : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("attnlens_model_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    Rng rng(41);
    io::save_encoder_model(small_config(), TransformerEncoder<double>(small_config().encoder, rng),
                           dir_.string());
    config_ = read((dir_ / "config.json").string());
    weights_ = read((dir_ / "model.safetensors").string());
  }
  void TearDown() override { fs::remove_all(dir_); }

  static std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }
  // The saved config.json with one edit applied to its JSON.
  template <class Edit>
  void write_config(Edit&& edit) const {
    nlohmann::json json = nlohmann::json::parse(config_);
    edit(json);
    std::ofstream(dir_ / "config.json") << json.dump();
  }
  void write_config_text(const std::string& text) const {
    std::ofstream(dir_ / "config.json") << text;
  }

  // The saved model.safetensors, changed by `edit` (name -> tensor).
  template <class Edit>
  void write_weights(Edit&& edit) const {
    const auto file = io::SafeTensors::parse(weights_);
    std::map<std::string, Tensor<double>> tensors;
    for (const auto& name : file.names()) tensors[name] = file.get<double>(name);
    edit(tensors);
    io::SafeTensorsWriter writer;
    for (const auto& [name, t] : tensors) writer.add(name, t);
    writer.save((dir_ / "model.safetensors").string());
  }

  void expect_load_error(const std::string& word) const {
    expect_error_naming<IoError>([&] { io::load_encoder_model<float>(dir_.string()); }, word);
  }

  fs::path dir_;
  std::string config_, weights_;
};

TEST_F(Model, SavedModelLoadsBackAndComputesTheSame) {
  Rng rng(41);
  const TransformerEncoder<double> original(small_config().encoder, rng);
  const auto loaded = io::load_encoder_model<double>(dir_.string());
  EXPECT_TRUE(loaded.layers[1].options().norm_first);
  EXPECT_EQ(loaded.layers[0].options().activation, Activation::gelu);
  ASSERT_TRUE(loaded.norm.has_value());
  EXPECT_EQ(loaded.residual.lambda, original.residual.lambda);
  const auto x = testing::random_tensor<double>({2, 3, 8}, rng);
  EXPECT_EQ(loaded.forward(x).output, original.forward(x).output);
  const auto reparsed = io::parse_encoder_config(io::encoder_config_json(small_config()));
  EXPECT_EQ(reparsed.encoder.layer.dim_feedforward, 16);
  EXPECT_EQ(reparsed.encoder.residual.lambda, (std::vector<double>{0.2, 0.4}));
}

TEST_F(Model, DefaultsFollowPyTorch) {
  const auto config = io::parse_encoder_config(
      R"({"model_type": "transformer_encoder", "d_model": 4, "nhead": 1, "num_layers": 1})");
  EXPECT_EQ(config.encoder.layer.dim_feedforward, 2048);
  EXPECT_EQ(config.encoder.layer.activation, Activation::relu);
  EXPECT_EQ(config.encoder.layer.layer_norm_eps, 1e-5);
  EXPECT_FALSE(config.encoder.layer.norm_first);
  EXPECT_FALSE(config.encoder.final_norm);
  EXPECT_EQ(config.encoder.residual.type, ResidualType::standard);
}

TEST_F(Model, MalformedConfigNamesTheProblem) {
  write_config_text("{\"d_model\": 8,");
  expect_load_error("not valid JSON");
  write_config_text("[1, 2]");
  expect_load_error("a JSON object");
  write_config([](auto& j) { j.erase("d_model"); });
  expect_load_error("missing key 'd_model'");
  write_config([](auto& j) { j["nhead"] = "2"; });
  expect_load_error("nhead: expected an integer");
  write_config([](auto& j) { j["norm_first"] = 1; });
  expect_load_error("norm_first: expected true or false");
  write_config([](auto& j) { j["layer_norm_eps"] = "small"; });
  expect_load_error("layer_norm_eps: expected a number");
  write_config([](auto& j) { j["dropout"] = 0.1; });
  expect_load_error("unknown key 'dropout'");
  write_config([](auto& j) { j["model_type"] = "vit"; });
  expect_load_error("model_type");
  write_config([](auto& j) { j["activation"] = "swish"; });
  expect_load_error("activation");
  write_config([](auto& j) { j["nhead"] = 3; });
  expect_load_error("EncoderLayerOptions::nhead");
  write_config([](auto& j) { j["num_layers"] = 0; });
  expect_load_error("EncoderOptions::num_layers");
  write_config([](auto& j) { j["position"] = {{"type", "rope"}}; });
  expect_load_error("position: type");
  write_config([](auto& j) { j["position"] = "none"; });
  expect_load_error("position: expected an object");
  write_config([](auto& j) { j["attention"] = {{"type", "kde"}}; });
  expect_load_error("attention: type");
  write_config([](auto& j) { j["residual"] = {{"type", "twicing"}}; });
  expect_load_error("residual: type");
  write_config([](auto& j) { j["residual"].erase("lambda"); });
  expect_load_error("residual: missing key 'lambda'");
  write_config([](auto& j) { j["residual"]["lambda"] = "0.3"; });
  expect_load_error("residual: lambda");
  write_config([](auto& j) { j["residual"]["lambda"] = {0.1, 0.2, 0.3}; });
  expect_load_error("ResidualOptions::lambda");
  write_config([](auto& j) { j["residual"]["learned"] = true; });
  expect_load_error("residual: unknown key 'learned'");
  write_config([](auto& j) { j["residual"] = {{"type", "standard"}, {"lambda", 0.5}}; });
  expect_load_error("unknown key 'lambda'");
  fs::remove(dir_ / "config.json");
  expect_load_error("config.json");
}

TEST_F(Model, MalformedWeightsNameTheTensor) {
  write_weights([](auto& t) { t.erase("layers.1.linear2.bias"); });
  expect_load_error("missing tensors 'layers.1.linear2.bias'");
  write_weights([](auto& t) { t["layers.2.norm1.weight"] = Tensor<double>({8}); });
  expect_load_error("unexpected tensors 'layers.2.norm1.weight'");
  write_weights([](auto& t) { t["layers.0.linear1.weight"] = Tensor<double>({16, 9}); });
  expect_load_error("layers.0.linear1.weight");
  write_weights([](auto& t) { t["norm.bias"] = Tensor<double>({2, 4}); });
  expect_load_error("norm.bias");
  fs::remove(dir_ / "model.safetensors");
  expect_load_error("model.safetensors");
}

TEST_F(Model, WrongDtypeNamesTheTensor) {
  const auto file = io::SafeTensors::parse(weights_);
  io::SafeTensorsWriter writer;
  for (const auto& name : file.names())
    if (name != "norm.weight") writer.add(name, file.get<double>(name));
  writer.add("norm.weight", Tensor<std::int64_t>({8}));
  writer.save((dir_ / "model.safetensors").string());
  expect_load_error("norm.weight");
}

}  // namespace
}  // namespace attnlens
