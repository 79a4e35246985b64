// `attnlens encode` on models exported by examples/export_pytorch.py from freshly built random
// torch.nn.TransformerEncoders (tests/reference/data/cli/encode_*): the round trip reproduces
// PyTorch's output and per-layer attention maps; bad input is one line and exit code 2.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>

#include "support/cli_test.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;
using testing::run_cli;

class CliEncode : public testing::CliTest {
 protected:
  static std::string model(const std::string& name) { return testing::fixture_path("cli/" + name); }
  static std::string input(const std::string& name) {
    return testing::fixture_path("cli/" + name + "_input.safetensors");
  }

  template <class T>
  void check_round_trip(const std::string& name) {
    SCOPED_TRACE(name);
    const auto expected = testing::load_fixture("cli/" + name + "_expected.safetensors");
    ASSERT_EQ(expected.metadata().at("double"), (std::is_same_v<T, double> ? "true" : "false"));
    const auto run = run_cli("encode --model " + model(name) + " --input " + input(name) +
                             " --output " + out_path() + " --maps " + path("m.safetensors") +
                             (std::is_same_v<T, double> ? " --double" : ""));
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const double tol = testing::default_tolerance<T>();
    const auto output = io::SafeTensors::load(out_path());
    EXPECT_EQ(output.names(), std::vector<std::string>{"output"});
    ATTNLENS_EXPECT_CLOSE(output.get<T>("output"), expected.get<T>("output"), tol);
    const auto maps = io::SafeTensors::load(path("m.safetensors"));
    EXPECT_EQ(maps.size() + 1, expected.size());
    for (const auto& key : maps.names())
      ATTNLENS_EXPECT_CLOSE(maps.get<T>(key), expected.get<T>(key), tol);
  }
};

TEST_F(CliEncode, ExportedEncoderReproducesPyTorch) {
  check_round_trip<float>("encode_post_relu_masks");
  check_round_trip<double>("encode_pre_gelu_norm_double");
}

TEST_F(CliEncode, MapsOnlyWhenAskedFor) {
  const auto run = run_cli("encode --model " + model("encode_post_relu_masks") + " --input " +
                           input("encode_post_relu_masks") + " --output " + out_path());
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);
}

TEST_F(CliEncode, BadInputIsOneLineAndExitCodeTwo) {
  const std::string name = "encode_post_relu_masks";
  const std::string good = " --model " + model(name) + " --input " + input(name);
  const std::string out = " --output " + out_path();
  // Another model's input: src has E = 24, not 32.
  expect_bad_input(
      "encode --model " + model(name) + " --input " + input("encode_pre_gelu_norm_double") + out,
      "src");
  expect_bad_input("encode --model " + path("no_model") + " --input " + input(name) + out,
                   "config.json");
  expect_bad_input("encode --model " + model(name) + " --input " + path("none.safetensors") + out,
                   "none.safetensors");
  expect_bad_input("encode" + good, "--output");

  io::SafeTensorsWriter extra;
  extra.add("src", Tensor<float>({1, 3, 32}));
  extra.add("attn_mask", Tensor<float>({3, 3}));
  extra.save(path("extra.safetensors"));
  expect_bad_input("encode --model " + model(name) + " --input " + path("extra.safetensors") + out,
                   "attn_mask");
  io::SafeTensorsWriter bad_mask;
  bad_mask.add("src", Tensor<float>({1, 3, 32}));
  bad_mask.add("mask", Tensor<float>({3, 4}));
  bad_mask.save(path("bad_mask.safetensors"));
  expect_bad_input(
      "encode --model " + model(name) + " --input " + path("bad_mask.safetensors") + out, "mask");

  // A copy of the model whose config has a typo.
  fs::copy(model(name), path("typo"));
  std::ifstream in(path("typo/config.json"));
  std::string config((std::istreambuf_iterator<char>(in)), {});
  config.replace(config.find("\"nhead\""), 7, "\"n_head\"");
  std::ofstream(path("typo/config.json")) << config;
  expect_bad_input("encode --model " + path("typo") + " --input " + input(name) + out, "nhead");
}

}  // namespace
}  // namespace attnlens
