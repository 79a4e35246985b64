// The model format (docs/model-format.md): save and load round trip, every malformed config.json
// or model.safetensors named in the issue gives an IoError naming the problem, and encoders with
// each position type and a learned fidelity residual, exported from PyTorch
// (tests/reference/data/blocks_model_*), give PyTorch's numbers.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <type_traits>

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

 public:
  static std::string read(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 protected:
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
  write_config([](auto& j) { j["position"] = {{"type", "xpos"}}; });
  expect_load_error("position: type: expected one of \"none\"");
  write_config([](auto& j) { j["position"] = {{"type", "quadratic"}}; });
  expect_load_error("2-D encodings need an image grid");
  write_config([](auto& j) { j["position"] = "none"; });
  expect_load_error("position: expected an object");
  write_config([](auto& j) { j["attention"] = {{"type", "kde"}}; });
  expect_load_error("attention: type: expected one of \"softmax\", got \"kde\"");
  write_config([](auto& j) { j["attention"] = {{"type", "softmax"}, {"sigma", 1}}; });
  expect_load_error("attention: unknown key 'sigma'");
  write_config([](auto& j) { j["residual"] = {{"type", "twicing"}}; });
  expect_load_error("residual: type");
  write_config([](auto& j) { j["residual"].erase("lambda"); });
  expect_load_error("residual: missing key 'lambda'");
  write_config([](auto& j) { j["residual"]["lambda"] = "0.3"; });
  expect_load_error("residual: lambda");
  write_config([](auto& j) { j["residual"]["lambda"] = {0.1, 0.2, 0.3}; });
  expect_load_error("ResidualOptions::lambda");
  write_config([](auto& j) { j["residual"]["sigma"] = true; });
  expect_load_error("residual: unknown key 'sigma'");
  write_config([](auto& j) { j["residual"]["learned"] = 1; });
  expect_load_error("residual: learned: expected true or false");
  write_config([](auto& j) { j["residual"] = {{"type", "fidelity"}, {"learned", true}}; });
  expect_load_error("missing tensors 'fidelity_lambda'");
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

// Saves an encoder of small_config() with `position` (and a learned lambda when asked) to dir.
io::EncoderModelConfig position_config(const PositionOptions& position, bool learned = false) {
  io::EncoderModelConfig config = small_config();
  config.encoder.position = position;
  config.encoder.residual.learned = learned;
  return config;
}

TEST_F(Model, EveryPositionTypeRoundTripsThroughTheFormat) {
  std::vector<PositionOptions> cases(7);
  cases[0].type = PositionType::sinusoidal;
  cases[0].base = 500.0;
  cases[1].type = PositionType::learned;
  cases[1].max_len = 9;
  cases[2].type = PositionType::shaw;
  cases[2].max_relative_position = 2;
  cases[3].type = PositionType::transformer_xl;
  cases[4].type = PositionType::t5;
  cases[4].num_buckets = 8;
  cases[4].max_distance = 12;
  cases[4].bidirectional = false;
  cases[5].type = PositionType::alibi;
  cases[5].causal = true;
  cases[6].type = PositionType::rope;
  cases[6].pairing = RopePairing::half;
  Rng rng(42);
  const auto x = testing::random_tensor<double>({2, 7, 8}, rng);
  for (const auto& position : cases) {
    SCOPED_TRACE(position_type_name(position.type));
    const auto config = position_config(position, true);
    TransformerEncoder<double> original(config.encoder, rng);
    original.residual.lambda << 0.1, 0.3;
    io::save_encoder_model(config, original, dir_.string());
    const auto loaded = io::load_encoder_model<double>(dir_.string());
    EXPECT_EQ(loaded.forward(x).output, original.forward(x).output);
    const auto reparsed = io::parse_encoder_config(read((dir_ / "config.json").string()));
    EXPECT_EQ(io::encoder_config_json(reparsed), io::encoder_config_json(config));
    EXPECT_EQ(reparsed.encoder.position.type, position.type);
    EXPECT_TRUE(reparsed.encoder.residual.learned);
  }
  // The parameters each type reads, and the ones it does not know.
  const auto parsed = [](const std::string& position) {
    return io::parse_encoder_config(
               R"({"model_type": "transformer_encoder", "d_model": 8, "nhead": 2,
                   "num_layers": 1, "position": )" +
               position + "}")
        .encoder.position;
  };
  EXPECT_EQ(parsed(R"({"type": "t5"})").num_buckets, 32);
  EXPECT_EQ(parsed(R"({"type": "t5"})").max_distance, 128);
  EXPECT_TRUE(parsed(R"({"type": "t5"})").bidirectional);
  EXPECT_EQ(parsed(R"({"type": "rope"})").pairing, RopePairing::interleaved);
  EXPECT_EQ(parsed(R"({"type": "rope", "base": 50})").base, 50.0);
  EXPECT_EQ(parsed(R"({"type": "shaw", "max_relative_position": 4})").max_relative_position, 4);
  for (const auto& [position, word] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type": "t5", "max_len": 4})", "position: unknown key 'max_len'"},
           {R"({"type": "learned"})", "position: missing key 'max_len'"},
           {R"({"type": "learned", "max_len": 4.5})", "position: max_len: expected an integer"},
           {R"({"type": "shaw"})", "position: missing key 'max_relative_position'"},
           {R"({"type": "alibi", "causal": "yes"})", "position: causal: expected true or false"},
           {R"({"type": "rope", "pairing": "split"})", "position: pairing: expected"},
           {R"({"type": "transformer_xl", "base": 10})", "position: unknown key 'base'"},
           {R"({"type": "sinusoidal", "max_len": 4})", "position: unknown key 'max_len'"},
           {R"({"type": "none", "base": 10})", "position: unknown key 'base'"},
           {R"({"kind": "t5"})", "position: missing key 'type'"}}) {
    SCOPED_TRACE(position);
    expect_error_naming<IoError>([&, p = position] { parsed(p); }, word);
  }
}

TEST_F(Model, PositionTensorsAreCheckedByName) {
  PositionOptions t5;
  t5.type = PositionType::t5;
  t5.num_buckets = 8;
  Rng rng(43);
  io::save_encoder_model(position_config(t5),
                         TransformerEncoder<double>(position_config(t5).encoder, rng),
                         dir_.string());
  config_ = read((dir_ / "config.json").string());
  weights_ = read((dir_ / "model.safetensors").string());
  write_weights([](auto& t) { t.erase("layers.1.self_attn.relative_attention_bias.weight"); });
  expect_load_error("missing tensors 'layers.1.self_attn.relative_attention_bias.weight'");
  write_weights([](auto& t) {
    t["layers.0.self_attn.relative_attention_bias.weight"] = Tensor<double>({32, 2});
  });
  expect_load_error("layers.0.self_attn.relative_attention_bias.weight");
  write_weights([](auto& t) { t["position_embeddings.weight"] = Tensor<double>({4, 8}); });
  expect_load_error("unexpected tensors 'position_embeddings.weight'");
  write_weights([](auto& t) { t["fidelity_lambda"] = Tensor<double>({2}); });
  expect_load_error("unexpected tensors 'fidelity_lambda'");         // lambda is fixed here
  write_config([](auto& j) { j["position"]["num_buckets"] = 16; });  // the file has 8
  write_weights([](auto&) {});
  expect_load_error("relative_attention_bias.weight");
  write_config([](auto& j) { j["position"]["num_buckets"] = 2; });
  expect_load_error("T5BiasOptions::num_buckets");

  PositionOptions learned;
  learned.type = PositionType::learned;
  learned.max_len = 5;
  io::save_encoder_model(position_config(learned, true),
                         TransformerEncoder<double>(position_config(learned, true).encoder, rng),
                         dir_.string());
  config_ = read((dir_ / "config.json").string());
  weights_ = read((dir_ / "model.safetensors").string());
  write_weights([](auto& t) { t["position_embeddings.weight"] = Tensor<double>({5, 9}); });
  expect_load_error("position_embeddings.weight");
  write_weights([](auto& t) { t["fidelity_lambda"] = Tensor<double>({3}); });
  expect_load_error("fidelity_lambda");
  write_weights([](auto& t) { t.erase("fidelity_lambda"); });
  expect_load_error("missing tensors 'fidelity_lambda'");
  write_weights([](auto& t) { t.erase("position_embeddings.weight"); });
  expect_load_error("missing tensors 'position_embeddings.weight'");
  write_config([](auto& j) { j["position"] = {{"type", "none"}}; });
  write_weights([](auto&) {});
  expect_load_error("unexpected tensors 'position_embeddings.weight'");
}

// An encoder exported from PyTorch (tests/reference/oracles/blocks.py, MODEL_CASES) against
// PyTorch's output on its input.
template <class T>
double model_fixture_error(const std::string& name) {
  const std::string stem = testing::fixture_path("blocks_model_" + name);
  const auto encoder = io::load_encoder_model<T>(stem);
  const auto input = io::SafeTensors::load(stem + "_input.safetensors");
  const auto expected = io::SafeTensors::load(stem + "_expected.safetensors");
  EXPECT_EQ(expected.metadata().at("double"), (std::is_same_v<T, double> ? "true" : "false"));
  const Tensor<T> src = input.get<T>("src");
  const Index L = src.dim(1);
  const auto mask =
      io::read_torch_masks<T>(input, io::TorchMaskNames{"src_key_padding_mask", "mask"},
                              {src.dim(0), encoder.nhead(), L, L});
  const double error =
      testing::max_abs_error(encoder.forward(src, mask).output, expected.get<T>("output"));
  std::cout << "blocks_model_" << name << " (" << (std::is_same_v<T, float> ? "float" : "double")
            << "): max abs error " << error << "\n";
  return error;
}

TEST(ModelFixtures, EncodersWithPositionsMatchPyTorch) {
  const double f = testing::default_tolerance<float>(), d = testing::default_tolerance<double>();
  EXPECT_LE(model_fixture_error<float>("t5"), f);
  EXPECT_LE(model_fixture_error<double>("alibi_kpm"), d);
  EXPECT_LE(model_fixture_error<float>("learned_fidelity_learned"), f);
  EXPECT_LE(model_fixture_error<double>("sinusoidal_fidelity"), d);
  EXPECT_LE(model_fixture_error<float>("shaw"), f);
  EXPECT_LE(model_fixture_error<double>("transformer_xl"), d);
  EXPECT_LE(model_fixture_error<double>("rope_half"), d);
  EXPECT_LE(model_fixture_error<float>("rope_interleaved"), f);
}

TEST(ModelFixtures, ConfigsNameTheirPositionsAndLearnedLambda) {
  const auto config = io::parse_encoder_config(
      Model::read(testing::fixture_path("blocks_model_learned_fidelity_learned/config.json")));
  EXPECT_EQ(config.encoder.position.type, PositionType::learned);
  EXPECT_EQ(config.encoder.position.max_len, 10);
  EXPECT_TRUE(config.encoder.residual.learned);
  // The learned lambda is the file's, not a default: perturbed away from its 0.3 init.
  const auto encoder = io::load_encoder_model<double>(
      testing::fixture_path("blocks_model_learned_fidelity_learned"));
  ASSERT_EQ(encoder.residual.lambda.size(), 3);
  for (Index l = 0; l < 3; ++l) {
    EXPECT_NE(encoder.residual.lambda[l], 0.0);
    EXPECT_NEAR(encoder.residual.lambda[l], 0.3, 0.2);
  }
  const auto t5 =
      io::parse_encoder_config(Model::read(testing::fixture_path("blocks_model_t5/config.json")));
  EXPECT_EQ(t5.encoder.position.num_buckets, 8);
  EXPECT_EQ(t5.encoder.position.max_distance, 16);
}

}  // namespace
}  // namespace attnlens
