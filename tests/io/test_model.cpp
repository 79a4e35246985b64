// The model format (docs/model-format.md): save and load round trip, every malformed config.json
// or model.safetensors named in the issue gives an IoError naming the problem, and encoders with
// each position type, a learned fidelity residual and each attention variant, exported from
// PyTorch (tests/reference/data/blocks_model_*), give the numbers of the PyTorch oracle
// (tests/reference/oracles/blocks.py).
#include <gtest/gtest.h>

#include <cmath>
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
  write_config([](auto& j) { j["attention"] = {{"type", "performer"}}; });
  expect_load_error("attention: type: expected one of \"softmax\", \"twicing\"");
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

// One sequence encoder position of each type, with its options away from their defaults.
std::vector<PositionOptions> every_position_type() {
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
  return cases;
}

TEST_F(Model, EveryPositionTypeRoundTripsThroughTheFormat) {
  const std::vector<PositionOptions> cases = every_position_type();
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

// small_config() with every layer's attention set to `attention`.
io::EncoderModelConfig attention_config(const AttentionVariantOptions& attention) {
  io::EncoderModelConfig config = small_config();
  config.encoder.layer.attention = attention;
  return config;
}

// The attention object config.json holds for these options (as encoder_config_json writes it).
nlohmann::json attention_json(const AttentionVariantOptions& attention) {
  return nlohmann::json::parse(io::encoder_config_json(attention_config(attention)))["attention"];
}

TEST_F(Model, EveryAttentionVariantRoundTripsThroughTheFormat) {
  std::vector<AttentionVariantOptions> cases(8);
  cases[0].boost = 1;  // twicing
  cases[1].type = AttentionVariantType::bilateral;
  cases[1].domain.type = DistanceKernelType::laplacian;
  cases[1].domain.leading = 1;
  cases[1].sigma_init = 2.0;
  cases[2].type = AttentionVariantType::bilateral;  // gaussian, boost 2
  cases[2].boost = 2;
  cases[3].type = AttentionVariantType::kde;
  cases[4].type = AttentionVariantType::robust_kde;
  cases[4].huber_a = 0.3;
  cases[5].type = AttentionVariantType::fourier;
  cases[5].fourier_epsilon = 1e-5;
  cases[6].type = AttentionVariantType::elliptical;
  cases[6].elliptical_delta = 3.0;
  cases[7].type = AttentionVariantType::neutreno;
  cases[7].neutreno_lambda = 0.4;
  cases[7].boost = 1;
  Rng rng(44);
  const auto x = testing::random_tensor<double>({2, 7, 8}, rng);
  for (const auto& attention : cases) {
    SCOPED_TRACE(attention_json(attention).dump());
    const auto config = attention_config(attention);
    TransformerEncoder<double> original(config.encoder, rng);
    for (std::size_t l = 0; l < original.layers.size(); ++l) {  // away from the inits
      auto& mha = original.layers[l].self_attn;
      if (mha.rho.size()) mha.rho << 0.3 + 0.1 * l, 1.7;
      if (mha.fourier_r.size()) mha.fourier_r << 0.8 - 0.2 * l;
    }
    io::save_encoder_model(config, original, dir_.string());
    const auto loaded = io::load_encoder_model<double>(dir_.string());
    for (std::size_t l = 0; l < loaded.layers.size(); ++l) {
      EXPECT_EQ(loaded.layers[l].self_attn.rho, original.layers[l].self_attn.rho);
      EXPECT_EQ(loaded.layers[l].self_attn.fourier_r, original.layers[l].self_attn.fourier_r);
    }
    const auto output = original.forward(x).output;
    EXPECT_EQ(loaded.forward(x).output, output);
    const auto reparsed = io::parse_encoder_config(read((dir_ / "config.json").string()));
    EXPECT_EQ(io::encoder_config_json(reparsed), io::encoder_config_json(config));
    const auto& a = reparsed.encoder.layer.attention;
    EXPECT_EQ(a.type, attention.type);
    EXPECT_EQ(a.boost, attention.boost);
    EXPECT_EQ(a.domain.type, attention.domain.type);
    EXPECT_EQ(a.domain.leading, attention.domain.leading);
    EXPECT_EQ(a.sigma_init, attention.sigma_init);
    EXPECT_EQ(a.huber_a, attention.huber_a);
    EXPECT_EQ(a.fourier_epsilon, attention.fourier_epsilon);
    EXPECT_EQ(a.elliptical_delta, attention.elliptical_delta);
    EXPECT_EQ(a.neutreno_lambda, attention.neutreno_lambda);
    // The variant is in force after loading: the same weights under softmax compute otherwise.
    config_ = read((dir_ / "config.json").string());
    weights_ = read((dir_ / "model.safetensors").string());
    write_config([](auto& j) { j["attention"] = {{"type", "softmax"}}; });
    write_weights([](auto& t) {
      for (const char* name : {"layers.0.self_attn.rho", "layers.1.self_attn.rho",
                               "layers.0.self_attn.fourier_r", "layers.1.self_attn.fourier_r"})
        t.erase(name);
    });
    const auto softmax = io::load_encoder_model<double>(dir_.string());
    EXPECT_GT(testing::max_abs_error(softmax.forward(x).output, output), 1e-3);
  }
}

TEST_F(Model, AttentionObjectDefaultsAndTwicing) {
  const auto parsed = [](const std::string& attention) {
    return io::parse_encoder_config(
               R"({"model_type": "transformer_encoder", "d_model": 8, "nhead": 2,
                   "num_layers": 1, "attention": )" +
               attention + "}")
        .encoder.layer.attention;
  };
  const auto none = io::parse_encoder_config(
      R"({"model_type": "transformer_encoder", "d_model": 8, "nhead": 2, "num_layers": 1})");
  EXPECT_EQ(none.encoder.layer.attention.type, AttentionVariantType::softmax);
  EXPECT_EQ(none.encoder.layer.attention.boost, 0);
  const auto twicing = parsed(R"({"type": "twicing"})");
  EXPECT_EQ(twicing.type, AttentionVariantType::softmax);
  EXPECT_EQ(twicing.boost, 1);
  EXPECT_EQ(attention_json(twicing), nlohmann::json::parse(R"({"type": "softmax", "boost": 1})"));
  EXPECT_EQ(parsed(R"({"type": "softmax", "boost": 3})").boost, 3);
  const auto bilateral = parsed(R"({"type": "bilateral"})");
  EXPECT_EQ(bilateral.type, AttentionVariantType::bilateral);
  EXPECT_EQ(bilateral.domain.type, DistanceKernelType::gaussian);
  EXPECT_EQ(bilateral.domain.leading, 0);
  EXPECT_FALSE(bilateral.domain.grid.has_value());
  EXPECT_EQ(bilateral.sigma_init, 4.0);
  EXPECT_EQ(bilateral.boost, 0);
  EXPECT_EQ(parsed(R"({"type": "bilateral", "kernel": "laplacian"})").domain.type,
            DistanceKernelType::laplacian);
  EXPECT_EQ(parsed(R"({"type": "kde", "boost": 2})").boost, 2);
  EXPECT_EQ(parsed(R"({"type": "robust_kde"})").huber_a, 0.2);
  EXPECT_EQ(parsed(R"({"type": "fourier"})").fourier_epsilon, 1e-6);
  EXPECT_EQ(parsed(R"({"type": "fourier", "epsilon": 0})").fourier_epsilon, 0.0);
  EXPECT_EQ(parsed(R"({"type": "elliptical"})").elliptical_delta, 5.0);
  EXPECT_EQ(parsed(R"({"type": "neutreno"})").neutreno_lambda, 0.6);
  EXPECT_EQ(parsed(R"({"type": "neutreno", "lambda": -0.25})").neutreno_lambda, -0.25);
}

// "content": false (positional-only attention) reaches the layers and is written back; the
// variants whose kernel reads the queries refuse it; an encoder's layers always have their
// feed-forward block (attention-only layers are a ViT's, mlp_ratio 0).
TEST_F(Model, ContentFlagAndFeedForwardWidth) {
  const auto config = [](const std::string& extra) {
    return R"({"model_type": "transformer_encoder", "d_model": 8, "nhead": 2, "num_layers": 1)" +
           extra + "}";
  };
  const io::EncoderModelConfig positional = io::parse_encoder_config(config(
      R"(, "position": {"type": "t5"}, "attention": {"type": "softmax", "content": false})"));
  EXPECT_FALSE(positional.encoder.layer.content);
  EXPECT_TRUE(io::parse_encoder_config(config("")).encoder.layer.content);
  const nlohmann::json written = nlohmann::json::parse(io::encoder_config_json(positional));
  EXPECT_EQ(written["attention"], nlohmann::json::parse(R"({"type": "softmax", "content": false})"));
  EXPECT_FALSE(nlohmann::json::parse(io::encoder_config_json(io::parse_encoder_config(config(""))))
                   ["attention"].contains("content"));
  Rng rng(2);
  const TransformerEncoder<float> encoder(positional.encoder, rng);
  EXPECT_FALSE(encoder.layers[0].self_attn.options().content);
  testing::expect_error_naming<IoError>(
      [&] { io::parse_encoder_config(config(R"(, "attention": {"type": "fourier", "content": false})")); },
      "attention: content: expected true for fourier");
  testing::expect_error_naming<IoError>(
      [&] { io::parse_encoder_config(config(R"(, "dim_feedforward": 0)")); },
      "dim_feedforward: expected an integer > 0, got 0");
}

TEST_F(Model, MalformedAttentionObjectNamesTheKey) {
  // Every message names the file, the object and the key: "<dir>/config.json: attention: ...".
  for (const auto& [attention, word] : std::vector<std::pair<std::string, std::string>>{
           {R"({"type": "performer"})",
            R"(config.json: attention: type: expected one of "softmax", "twicing", "bilateral")"},
           {R"({"type": "performer"})", R"(got "performer")"},
           {R"({"type": 3})", "config.json: attention: type: expected a string"},
           {R"({"boost": 1})", "config.json: attention: missing key 'type'"},
           {R"("twicing")", "config.json: attention: expected an object"},
           {R"({"type": "bilateral", "huber_a": 0.2})",
            "config.json: attention: unknown key 'huber_a'"},
           {R"({"type": "robust_kde", "kernel": "gaussian"})",
            "config.json: attention: unknown key 'kernel'"},
           {R"({"type": "kde", "lambda": 0.4})", "config.json: attention: unknown key 'lambda'"},
           {R"({"type": "softmax", "delta": 5})", "config.json: attention: unknown key 'delta'"},
           {R"({"type": "twicing", "boost": 2})", "config.json: attention: unknown key 'boost'"},
           {R"({"type": "bilateral", "kernel": "box"})",
            R"(config.json: attention: kernel: expected "gaussian" or "laplacian", got "box")"},
           {R"({"type": "bilateral", "kernel": 2})",
            "config.json: attention: kernel: expected a string"},
           {R"({"type": "softmax", "boost": 1.5})",
            "config.json: attention: boost: expected an integer"},
           {R"({"type": "softmax", "boost": "1"})",
            "config.json: attention: boost: expected an integer"},
           {R"({"type": "softmax", "boost": -1})",
            "config.json: attention: boost: expected an integer >= 0, got -1"},
           {R"({"type": "elliptical", "boost": -2})", "config.json: attention: boost"},
           {R"({"type": "robust_kde", "huber_a": 0})",
            "config.json: attention: huber_a: expected a number > 0"},
           {R"({"type": "robust_kde", "huber_a": -0.2})", "config.json: attention: huber_a"},
           {R"({"type": "robust_kde", "huber_a": "0.2"})",
            "config.json: attention: huber_a: expected a number"},
           {R"({"type": "bilateral", "sigma_init": 0})",
            "config.json: attention: sigma_init: expected a number > 0"},
           {R"({"type": "bilateral", "leading": -1})", "config.json: attention: leading"},
           {R"({"type": "bilateral", "leading": true})",
            "config.json: attention: leading: expected an integer"},
           {R"({"type": "fourier", "epsilon": -1e-6})", "config.json: attention: epsilon"},
           {R"({"type": "elliptical", "delta": 0})", "config.json: attention: delta"},
           {R"({"type": "neutreno", "lambda": "0.6"})",
            "config.json: attention: lambda: expected a number"}}) {
    SCOPED_TRACE(attention);
    write_config([&, a = attention](auto& j) { j["attention"] = nlohmann::json::parse(a); });
    expect_load_error(word);
  }
}

TEST_F(Model, AttentionTensorsAreCheckedByName) {
  // config.json says bilateral, the file (a softmax encoder's) has no rho.
  write_config([](auto& j) { j["attention"] = {{"type", "bilateral"}}; });
  expect_load_error(
      "model.safetensors: missing tensors 'layers.0.self_attn.rho', 'layers.1.self_attn.rho'");
  // A softmax config with a fourier_r in the file.
  write_config([](auto& j) { j["attention"] = {{"type", "softmax"}}; });
  write_weights([](auto& t) { t["layers.1.self_attn.fourier_r"] = Tensor<double>({1}); });
  expect_load_error("model.safetensors: unexpected tensors 'layers.1.self_attn.fourier_r'");

  AttentionVariantOptions bilateral;
  bilateral.type = AttentionVariantType::bilateral;
  Rng rng(45);
  io::save_encoder_model(attention_config(bilateral),
                         TransformerEncoder<double>(attention_config(bilateral).encoder, rng),
                         dir_.string());
  config_ = read((dir_ / "config.json").string());
  weights_ = read((dir_ / "model.safetensors").string());
  EXPECT_NO_THROW(io::load_encoder_model<float>(dir_.string()));
  write_weights([](auto& t) { t.erase("layers.1.self_attn.rho"); });
  expect_load_error("missing tensors 'layers.1.self_attn.rho'");
  write_weights([](auto& t) { t["layers.0.self_attn.rho"] = Tensor<double>({3}); });  // H = 2
  expect_load_error("layers.0.self_attn.rho");
  write_weights([](auto& t) { t["layers.0.self_attn.rho"] = Tensor<double>({1, 2}); });
  expect_load_error("layers.0.self_attn.rho");
  write_weights([](auto& t) { t["layers.0.self_attn.fourier_r"] = Tensor<double>({1}); });
  expect_load_error("unexpected tensors 'layers.0.self_attn.fourier_r'");
  // The same file under other types: rho is unexpected, fourier's R is missing.
  write_weights([](auto&) {});
  write_config([](auto& j) { j["attention"] = {{"type", "fourier"}}; });
  expect_load_error("missing tensors 'layers.0.self_attn.fourier_r'");
  expect_load_error("unexpected tensors 'layers.0.self_attn.rho'");
  write_config([](auto& j) { j["attention"] = {{"type", "twicing"}}; });
  expect_load_error("unexpected tensors 'layers.0.self_attn.rho', 'layers.1.self_attn.rho'");

  AttentionVariantOptions fourier;
  fourier.type = AttentionVariantType::fourier;
  io::save_encoder_model(attention_config(fourier),
                         TransformerEncoder<double>(attention_config(fourier).encoder, rng),
                         dir_.string());
  config_ = read((dir_ / "config.json").string());
  weights_ = read((dir_ / "model.safetensors").string());
  write_weights([](auto& t) { t["layers.1.self_attn.fourier_r"] = Tensor<double>({2}); });
  expect_load_error("layers.1.self_attn.fourier_r");
  write_weights([](auto& t) { t.erase("layers.0.self_attn.fourier_r"); });
  expect_load_error("missing tensors 'layers.0.self_attn.fourier_r'");
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

// Encoders with attention variants (MODEL_CASES with an "attention" object), against the
// oracle's float64 stack rounded to the case's dtype.
TEST(ModelFixtures, EncodersWithAttentionVariantsMatchPyTorch) {
  const double f = testing::default_tolerance<float>(), d = testing::default_tolerance<double>();
  EXPECT_LE(model_fixture_error<float>("twicing_kpm"), f);
  EXPECT_LE(model_fixture_error<double>("boost2_alibi"), d);
  EXPECT_LE(model_fixture_error<float>("twicing_t5_kpm"), f);
  EXPECT_LE(model_fixture_error<float>("bilateral_gaussian_kpm"), f);
  EXPECT_LE(model_fixture_error<double>("bilateral_laplacian_leading_twicing"), d);
  EXPECT_LE(model_fixture_error<float>("bilateral_rope"), f);
  EXPECT_LE(model_fixture_error<float>("kde"), f);
  EXPECT_LE(model_fixture_error<double>("robust_kde_kpm"), d);
  EXPECT_LE(model_fixture_error<float>("fourier"), f);
  EXPECT_LE(model_fixture_error<float>("elliptical_kpm"), f);
  EXPECT_LE(model_fixture_error<double>("neutreno"), d);
}

TEST(ModelFixtures, ConfigsNameTheirAttentionVariants) {
  const auto attention = [](const std::string& name) {
    return io::parse_encoder_config(
               Model::read(testing::fixture_path("blocks_model_" + name + "/config.json")))
        .encoder.layer.attention;
  };
  EXPECT_EQ(attention("t5").type, AttentionVariantType::softmax);
  EXPECT_EQ(attention("twicing_kpm").type, AttentionVariantType::softmax);
  EXPECT_EQ(attention("twicing_kpm").boost, 1);
  EXPECT_EQ(attention("boost2_alibi").boost, 2);
  const auto laplacian = attention("bilateral_laplacian_leading_twicing");
  EXPECT_EQ(laplacian.type, AttentionVariantType::bilateral);
  EXPECT_EQ(laplacian.domain.type, DistanceKernelType::laplacian);
  EXPECT_EQ(laplacian.domain.leading, 1);
  EXPECT_EQ(laplacian.boost, 1);
  EXPECT_EQ(laplacian.sigma_init, 2.0);
  EXPECT_EQ(attention("bilateral_rope").domain.type, DistanceKernelType::gaussian);
  EXPECT_EQ(attention("robust_kde_kpm").huber_a, 0.3);
  EXPECT_EQ(attention("elliptical_kpm").elliptical_delta, 2.0);
  EXPECT_EQ(attention("neutreno").neutreno_lambda, 0.6);
  // rho and R are the file's, not their inits (sigma 4, R 1): sigmas differ per head.
  const auto bilateral =
      io::load_encoder_model<double>(testing::fixture_path("blocks_model_bilateral_rope"));
  for (const auto& layer : bilateral.layers) {
    const Vector<double> sigma =
        layer.self_attn.rho.unaryExpr([](double r) { return std::log1p(std::exp(r)); });
    ASSERT_EQ(sigma.size(), 3);
    ASSERT_TRUE(sigma.allFinite());  // minCoeff and maxCoeff skip a NaN that is not first
    EXPECT_LT(sigma.minCoeff(), 1.5);
    EXPECT_GT(sigma.maxCoeff(), 2.5);
  }
  const auto fourier = io::load_encoder_model<float>(testing::fixture_path("blocks_model_fourier"));
  for (const auto& layer : fourier.layers) {
    ASSERT_EQ(layer.self_attn.fourier_r.size(), 1);
    EXPECT_GT(std::abs(layer.self_attn.fourier_r[0] - 1.0f), 0.05f);
  }
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

// The elements of an encoder's weight matrices (its rank-2 parameters), as for_each_parameter
// walks them; Transformer-XL's u and v (H x d) are counted with the vectors.
Index matrix_parameter_count(TransformerEncoder<float>& encoder) {
  Index count = 0;
  for_each_parameter(encoder, "", [&](const std::string& name, auto& p, const Shape& = {}) {
    const bool xl_bias = name.size() >= 8 && (name.compare(name.size() - 8, 8, "r_w_bias") == 0 ||
                                              name.compare(name.size() - 8, 8, "r_r_bias") == 0);
    if (std::decay_t<decltype(p)>::ColsAtCompileTime != 1 && !xl_bias) count += p.size();
  });
  return count;
}

TEST(ModelLimits, MinimumParameterCountIsTheEncodersMatrices) {
  // The count that load_encoder_model holds against model.safetensors before it allocates must
  // never exceed what the encoder has: it is exactly its weight matrices and tables.
  std::vector<PositionOptions> positions = every_position_type();
  positions.emplace_back();  // none
  for (const auto& position : positions)
    for (const bool bias : {true, false}) {
      SCOPED_TRACE(position_type_name(position.type));
      EncoderOptions options;
      options.layer = {12, 3, 20, Activation::relu, 1e-5, false, bias};
      options.layer.attention.type = AttentionVariantType::bilateral;
      options.num_layers = 3;
      options.final_norm = true;
      options.position = position;
      Rng rng(5);
      TransformerEncoder<float> encoder(options, rng);
      EXPECT_EQ(io::detail::minimum_parameter_count(options, "config.json"),
                matrix_parameter_count(encoder));
    }
}

TEST(ModelLimits, ConfigLargerThanItsWeightsFailsBeforeAllocation) {
  io::EncoderModelConfig config;
  config.encoder.layer = {8, 2, 16};
  Rng rng(3);
  const auto weights = io::SafeTensors::parse(
      io::module_weights(TransformerEncoder<float>(config.encoder, rng)).bytes());
  config.encoder.layer.d_model = 1'000'000'000;
  config.encoder.layer.nhead = 1;
  expect_error_naming<IoError>(
      [&] { io::encoder_from_weights<float>(config, weights, "c.json", "w.safetensors"); },
      "c.json: the encoder it describes (d_model 1000000000");
  config.encoder.layer = {8, 2, 16};
  config.encoder.position.type = PositionType::shaw;
  config.encoder.position.max_relative_position = std::numeric_limits<Index>::max();
  expect_error_naming<IoError>(
      [&] { io::encoder_from_weights<float>(config, weights, "c.json", "w.safetensors"); },
      "c.json: position: max_relative_position: 2 x 9223372036854775807 overflows");
  // Negative sizes count nothing here; the constructors name them before they allocate.
  config.encoder.position.type = PositionType::t5;
  config.encoder.position.num_buckets = -4;
  expect_error_naming<IoError>(
      [&] { io::encoder_from_weights<float>(config, weights, "c.json", "w.safetensors"); },
      "c.json: T5BiasOptions::num_buckets: expected >= 4 (bidirectional), got -4");
}

}  // namespace
}  // namespace attnlens
