// `attnlens mha` and `attnlens info` run as a user runs them, on the committed fixtures
// exported from torch.nn.MultiheadAttention (tests/reference/data/cli).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>

#include "support/cli_test.hpp"

namespace attnlens {
namespace {

namespace fs = std::filesystem;

using testing::CliRun;
using testing::run_cli;

class CliMha : public testing::CliTest {
 protected:
  // Runs `attnlens mha` on a fixture case as its metadata says and compares with PyTorch.
  template <class T>
  void check_case(const std::string& name) {
    SCOPED_TRACE(name);
    const auto expected = testing::load_fixture("cli/mha_" + name + "_expected.safetensors");
    const auto& meta = expected.metadata();
    std::string args = "mha --weights " + cli_fixture("mha_" + name + "_weights") + " --input " +
                       cli_fixture("mha_" + name + "_input") + " --output " + out_path() +
                       " --num-heads " + meta.at("num_heads") + " --need-weights";
    if (!meta.at("prefix").empty()) args += " --prefix " + meta.at("prefix");
    if (meta.at("causal") == "true") args += " --causal";
    if (meta.at("double") == "true") args += " --double";
    const CliRun run = run_cli(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const auto actual = io::SafeTensors::load(out_path());
    EXPECT_EQ(actual.info("output").dtype,
              (std::is_same_v<T, double> ? io::DType::F64 : io::DType::F32));
    const double tol = testing::default_tolerance<T>();
    ATTNLENS_EXPECT_CLOSE(actual.get<T>("output"), expected.get<T>("output"), tol);
    ATTNLENS_EXPECT_CLOSE(actual.get<T>("weights"), expected.get<T>("weights"), tol);
  }
};

TEST_F(CliMha, ReproducesPyTorchForEveryMaskType) {
  for (const char* name :
       {"plain", "causal", "key_padding_bool", "key_padding_u8", "attn_mask_bool",
        "attn_mask_float", "attn_mask_3d", "cross_kdim_prefix"})
    check_case<float>(name);
  check_case<double>("double");
}

TEST_F(CliMha, WeightsOnlyWhenAskedFor) {
  const CliRun run =
      run_cli("mha --weights " + cli_fixture("mha_plain_weights") + " --input " +
              cli_fixture("mha_plain_input") + " --output " + out_path() + " --num-heads 2");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto actual = io::SafeTensors::load(out_path());
  EXPECT_TRUE(actual.contains("output"));
  EXPECT_FALSE(actual.contains("weights"));
}

TEST_F(CliMha, BadInputIsOneLineAndExitCodeTwo) {
  const std::string weights = " --weights " + cli_fixture("mha_plain_weights");
  const std::string input = " --input " + cli_fixture("mha_plain_input");
  const std::string output = " --output " + out_path();
  // The inputs of another case, the weights of another case, a missing file, a bad prefix.
  expect_bad_input("mha" + weights + " --input " + cli_fixture("mha_attn_mask_bool_input") +
                       output + " --num-heads 2",
                   "query");
  expect_bad_input("mha" + weights + input + output + " --num-heads 3", "num_heads");
  expect_bad_input("mha --weights " + (dir_ / "missing.safetensors").string() + input + output +
                       " --num-heads 2",
                   "missing.safetensors");
  expect_bad_input("mha" + weights + input + output + " --num-heads 2 --prefix self_attn.",
                   "self_attn.in_proj_weight");
  // A weights file given as input: it has no query.
  expect_bad_input(
      "mha" + weights + " --input " + cli_fixture("mha_plain_weights") + output + " --num-heads 2",
      "query");
  // Masks of the wrong shape or dtype, and a key without its value.
  const auto write_input = [&](const std::string& file, auto&& add_extra) {
    io::SafeTensorsWriter writer;
    writer.add("query", Tensor<float>({2, 7, 16}));
    add_extra(writer);
    writer.save((dir_ / file).string());
    return " --input " + (dir_ / file).string();
  };
  const std::string bad_mask = write_input("bad_mask.safetensors", [](io::SafeTensorsWriter& w) {
    w.add_bool("attn_mask", Tensor<std::uint8_t>({7, 6}));
  });
  expect_bad_input("mha" + weights + bad_mask + output + " --num-heads 2", "attn_mask");
  const std::string float_padding =
      write_input("float_padding.safetensors", [](io::SafeTensorsWriter& w) {
        w.add("key_padding_mask", Tensor<float>({2, 7}));
      });
  expect_bad_input("mha" + weights + float_padding + output + " --num-heads 2", "key_padding_mask");
  const std::string key_only = write_input("key_only.safetensors", [](io::SafeTensorsWriter& w) {
    w.add("key", Tensor<float>({2, 7, 16}));
  });
  expect_bad_input("mha" + weights + key_only + output + " --num-heads 2", "value");
  expect_bad_input("mha" + weights + input + output, "--num-heads");
}

TEST_F(CliMha, InfoListsTensors) {
  const CliRun run = run_cli("info " + cli_fixture("mha_cross_kdim_prefix_input"));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("key F32 [2, 8, 12]"), std::string::npos) << run.output;
  EXPECT_NE(run.output.find("value F32 [2, 8, 20]"), std::string::npos) << run.output;
  const CliRun bad = run_cli("info " + (dir_ / "nothing.safetensors").string());
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
}

}  // namespace
}  // namespace attnlens
