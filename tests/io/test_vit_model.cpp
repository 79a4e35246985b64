// The vision transformer's model directory (docs/model-format.md, "Vision transformers"): save
// and load round trip, timm's state_dict names read from the PyTorch oracle's ViTs
// (tests/reference/data/vit_*, timm's module structure) through a directory, and malformed
// config.json or model.safetensors named in the error.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "attnlens/io/vit_model.hpp"
#include "support/blocks.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;
using testing::expect_error_naming;

io::VitModelConfig small_vit_config() {
  io::VitModelConfig config;
  VisionTransformerOptions& o = config.vit;
  o.image_height = 8;
  o.image_width = 12;
  o.patch_size = 4;
  o.in_chans = 2;
  o.num_classes = 3;
  o.encoder.layer = {8, 2, 16, Activation::gelu, 1e-6, true, true};
  o.encoder.num_layers = 2;
  o.encoder.final_norm = true;
  o.relative_position.type = PositionType::quadratic;
  config.mean = {0.25, 0.5};
  config.std = {0.5, 2.0};
  return config;
}

class VitModel : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("attnlens_vit_model_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
    Rng rng(5);
    io::save_vit_model(small_vit_config(), VisionTransformer<float>(small_vit_config().vit, rng),
                       dir_.string());
    std::ifstream in(dir_ / "config.json");
    config_ = nlohmann::json::parse(in);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // The saved config.json with one edit applied.
  template <class Edit>
  void write_config(Edit&& edit) const {
    nlohmann::json json = config_;
    edit(json);
    std::ofstream(dir_ / "config.json") << json.dump();
  }
  void expect_load_error(const std::string& naming) const {
    expect_error_naming<IoError>([&] { io::load_vit_model<float>(dir_.string()); }, naming);
  }

  fs::path dir_;
  nlohmann::json config_;
};

TEST_F(VitModel, SavedModelLoadsBackAndComputesTheSame) {
  Rng rng(5);
  const VisionTransformer<float> original(small_vit_config().vit, rng);
  const VisionTransformer<float> loaded = io::load_vit_model<float>(dir_.string());
  Tensor<float> images({2, 2, 8, 12});
  for (float& v : images.storage()) v = rng.normal<float>();
  EXPECT_EQ(loaded.forward(images).logits.storage(), original.forward(images).logits.storage());
  const io::VitModelConfig config = io::load_vit_config(dir_.string());
  EXPECT_EQ(config.mean, small_vit_config().mean);
  EXPECT_EQ(config.std, small_vit_config().std);
  EXPECT_EQ(io::model_type_of(dir_.string()), "vision_transformer");
  // timm's names in the file.
  const io::SafeTensors weights = io::SafeTensors::load((dir_ / "model.safetensors").string());
  for (const char* name :
       {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.0.attn.qkv.weight",
        "blocks.1.attn.proj.bias", "blocks.0.mlp.fc1.weight", "blocks.1.norm2.weight",
        "blocks.0.attn.alpha", "norm.bias", "head.weight"})
    EXPECT_TRUE(weights.contains(name)) << name;
  EXPECT_EQ(weights.info("patch_embed.proj.weight").shape, (Shape{8, 2, 4, 4}));
  EXPECT_EQ(weights.info("pos_embed").shape, (Shape{1, 7, 8}));
}

TEST_F(VitModel, DefaultsFollowTimm) {
  const io::VitModelConfig config = io::parse_vit_config(
      R"({"model_type": "vision_transformer", "img_size": 32, "patch_size": 8,
          "num_classes": 10, "embed_dim": 192, "depth": 12, "num_heads": 3})");
  const VisionTransformerOptions& o = config.vit;
  EXPECT_EQ(o.image_height, 32);
  EXPECT_EQ(o.image_width, 32);
  EXPECT_EQ(o.in_chans, 3);
  EXPECT_EQ(o.encoder.layer.dim_feedforward, 768);  // mlp_ratio 4
  EXPECT_EQ(o.encoder.layer.activation, Activation::gelu);
  EXPECT_DOUBLE_EQ(o.encoder.layer.layer_norm_eps, 1e-6);
  EXPECT_TRUE(o.encoder.layer.norm_first);
  EXPECT_TRUE(o.encoder.final_norm);
  EXPECT_TRUE(o.class_token);
  EXPECT_EQ(o.pooling, VitPooling::token);
  EXPECT_EQ(o.position, VitPosition::learned);
  EXPECT_EQ(o.encoder.layer.dropout, 0.0);
  EXPECT_TRUE(config.mean.empty());
  // A ratio whose product lands a rounding below an integer gives that integer.
  const auto ratio = io::parse_vit_config(
      R"({"model_type": "vision_transformer", "img_size": [8, 4], "patch_size": 4,
          "num_classes": 0, "embed_dim": 192, "depth": 1, "num_heads": 3,
          "mlp_ratio": 0.6666666666666666, "class_token": false})");
  EXPECT_EQ(ratio.vit.encoder.layer.dim_feedforward, 128);
  EXPECT_EQ(ratio.vit.image_height, 8);
  EXPECT_EQ(ratio.vit.image_width, 4);
  EXPECT_EQ(ratio.vit.pooling, VitPooling::mean);  // timm's default without a class token
}

TEST_F(VitModel, MalformedConfigNamesTheProblem) {
  write_config([](auto& j) { j["model_type"] = "transformer_encoder"; });
  expect_load_error("model_type");
  write_config([](auto& j) { j.erase("patch_size"); });
  expect_load_error("missing key 'patch_size'");
  write_config([](auto& j) { j["img_size"] = "big"; });
  expect_load_error("img_size: expected an integer or [height, width]");
  write_config([](auto& j) { j["img_size"] = {10, 12}; });
  expect_load_error("image_height");  // not a multiple of patch_size 4
  write_config([](auto& j) { j["global_pool"] = "max"; });
  expect_load_error("global_pool");
  write_config([](auto& j) { j["pos_embed"] = "sinusoidal"; });
  expect_load_error("pos_embed");
  write_config([](auto& j) { j["relative_position"] = {{"type", "t5"}}; });
  expect_load_error("\"quadratic\"");  // lists the encodings on the patch grid
  write_config([](auto& j) { j["mean"] = {0.5}; });
  expect_load_error("mean: expected an array of 2 numbers");
  write_config([](auto& j) { j["std"] = {1.0, 0.0}; });
  expect_load_error("std: expected an array of 2 numbers (one per input channel), each > 0");
  write_config([](auto& j) { j["mlp_ratio"] = -1; });
  expect_load_error("mlp_ratio");
  write_config([](auto& j) { j["patch_embed"] = 1; });
  expect_load_error("unknown key 'patch_embed'");
  write_config([](auto& j) { j["proj_drop_rate"] = 1.0; });
  expect_load_error("proj_drop_rate: expected a probability in [0, 1)");
  write_config([](auto& j) { j["attn_drop_rate"] = 0.1; });
  expect_load_error("attn_drop_rate: expected 0 (dropout on the attention probabilities");
}

TEST_F(VitModel, DropoutRateIsKeptAndWrittenOnlyWhenSet) {
  io::VitModelConfig config = io::parse_vit_config(
      R"({"model_type": "vision_transformer", "img_size": 8, "patch_size": 4, "num_classes": 2,
          "embed_dim": 8, "depth": 1, "num_heads": 2, "proj_drop_rate": 0.1,
          "attn_drop_rate": 0.0})");
  EXPECT_EQ(config.vit.encoder.layer.dropout, 0.1);
  EXPECT_EQ(io::parse_vit_config(io::vit_config_json(config)).vit.encoder.layer.dropout, 0.1);
  config.vit.encoder.layer.dropout = 0;
  EXPECT_EQ(io::vit_config_json(config).find("drop"), std::string::npos);
}

// mlp_ratio 0: attention-only blocks, no mlp.* and no norm2.* (not timm's: timm's Block always has
// both); "content": false: positional-only attention. Both are written back and load into the
// same model; the quadratic encoding's init setting round-trips too.
TEST_F(VitModel, AttentionOnlyPositionalBlocksRoundTrip) {
  io::VitModelConfig config = io::parse_vit_config(
      R"({"model_type": "vision_transformer", "img_size": 8, "patch_size": 2, "in_chans": 1,
          "num_classes": 3, "embed_dim": 12, "depth": 2, "num_heads": 3, "mlp_ratio": 0,
          "class_token": false, "pos_embed": "none",
          "relative_position": {"type": "quadratic", "init": "attention-cnn"},
          "attention": {"type": "softmax", "content": false}})");
  const VisionTransformerOptions& o = config.vit;
  EXPECT_EQ(o.encoder.layer.dim_feedforward, 0);
  EXPECT_FALSE(o.encoder.layer.content);
  EXPECT_EQ(std::get<std::string>(o.relative_position.extra.at("init")), "attention-cnn");
  const nlohmann::json written = nlohmann::json::parse(io::vit_config_json(config));
  EXPECT_EQ(written["mlp_ratio"], 0.0);
  EXPECT_EQ(written["attention"], nlohmann::json::parse(R"({"type": "softmax", "content": false})"));
  EXPECT_EQ(written["relative_position"]["init"], "attention-cnn");
  Rng rng(7);
  const VisionTransformer<float> vit(o, rng);
  io::save_vit_model(config, vit, dir_.string());
  const io::SafeTensors weights = io::SafeTensors::load((dir_ / "model.safetensors").string());
  for (const auto& name : weights.names()) {
    EXPECT_EQ(name.find("mlp."), std::string::npos) << name;
    EXPECT_EQ(name.find("norm2"), std::string::npos) << name;
  }
  EXPECT_TRUE(weights.contains("blocks.1.norm1.weight"));
  EXPECT_TRUE(weights.contains("blocks.1.attn.center_shift"));
  const VisionTransformer<float> loaded = io::load_vit_model<float>(dir_.string());
  EXPECT_EQ(loaded.options().encoder.layer.dim_feedforward, 0);
  EXPECT_FALSE(loaded.blocks[0].self_attn.options().content);
  Tensor<float> images({2, 1, 8, 8});
  for (float& v : images.storage()) v = rng.normal<float>();
  EXPECT_EQ(loaded.forward(images).logits.storage(), vit.forward(images).logits.storage());
  // Positional-only: every image gets the same attention.
  EncoderForwardOptions per_head;
  per_head.weights = AttentionWeights::per_head;
  const auto maps = loaded.forward(images, per_head).weights;
  EXPECT_EQ(maps[1].matrix({0, 2}), maps[1].matrix({1, 2}));

  // An attention-only config's mlp_ratio must be 0 exactly; a ratio that rounds the MLP away,
  // and positional-only attention for a variant whose range kernel needs the queries, are not
  // taken.
  write_config([](auto& j) { j["mlp_ratio"] = 0.01; });
  expect_load_error("mlp_ratio: expected 0 (attention-only blocks) or a number > 0 giving");
  write_config([](auto& j) { j["attention"] = {{"type", "kde"}, {"content", false}}; });
  expect_load_error("content: expected true for kde");
  write_config([](auto& j) { j["attention"] = {{"type", "softmax"}, {"content", 0}}; });
  expect_load_error("content: expected true or false");
  write_config([](auto& j) { j["relative_position"] = {{"type", "quadratic"}, {"init", "cnn"}}; });
  expect_load_error("init: expected \"unit\" or \"attention-cnn\"");
}

TEST_F(VitModel, SizesAreCheckedAgainstTheWeightsBeforeAllocating) {
  // 2^20 x 2^20 pixels would be a pos_embed of 2^36 floats: refused from the counts.
  write_config([](auto& j) { j["img_size"] = {1 << 20, 1 << 20}; });
  expect_load_error("has at least");
  write_config([](auto& j) { j["img_size"] = {int64_t(1) << 40, int64_t(1) << 40}; });
  expect_load_error("config.json");
  write_config([](auto& j) { j["depth"] = 3; });
  expect_load_error("depth 3) has at least");
  write_config([](auto& j) {
    j["class_token"] = false;
    j["global_pool"] = "avg";
  });
  expect_load_error("unexpected tensors 'cls_token'");
}

TEST_F(VitModel, TensorsAreCheckedByName) {
  io::SafeTensors weights = io::SafeTensors::load((dir_ / "model.safetensors").string());
  io::SafeTensorsWriter writer;
  for (const auto& name : weights.names())
    if (name != "cls_token") writer.add(name, weights.get<float>(name));
  writer.add("extra.weight", Tensor<float>({2}));
  writer.save((dir_ / "model.safetensors").string());
  expect_load_error("missing tensors 'cls_token'; unexpected tensors 'extra.weight'");
}

// The oracle's ViTs (timm's module structure, PyTorch's numbers) through a model directory: the
// fixture's state_dict is model.safetensors as PyTorch saved it, config.json is written from
// the case; the logits are PyTorch's.
TEST(VitModelFixture, TimmStructuredViTsLoadAndClassifyAsPyTorch) {
  const io::SafeTensors file = testing::load_typed_fixture<float>("vit");
  const int checked = testing::for_each_case(file, "", [&](const auto& c, const auto& prefix) {
    const fs::path dir = fs::temp_directory_path() / ("attnlens_vit_fixture_" + prefix);
    io::VitModelConfig config;
    config.vit = testing::vit_options(c);
    io::SafeTensorsWriter weights;
    for (const auto& name : file.names())
      if (name.rfind(prefix, 0) == 0 && name != prefix + "images" && name != prefix + "logits" &&
          name != prefix + "tokens")
        weights.add(name.substr(prefix.size()), file.get<float>(name));
    io::write_model_directory(dir.string(), io::vit_config_json(config), weights);
    const VisionTransformer<float> vit = io::load_vit_model<float>(dir.string());
    const auto out = vit.forward(file.get<float>(prefix + "images"));
    ATTNLENS_EXPECT_RELATIVE_CLOSE(out.logits, file.get<float>(prefix + "logits"), 1e-4, 1e-5);
    fs::remove_all(dir);
  });
  EXPECT_EQ(checked, 6);
}

}  // namespace
}  // namespace attnlens
