// `attnlens mha --position ...` and `attnlens conv` run as a user runs them, on fixtures from
// PyTorch implementations of the same encodings (tests/reference/oracles/positions.py).
#include <gtest/gtest.h>

#include <string>

#include "support/cli_test.hpp"

namespace attnlens {
namespace {

using testing::CliRun;
using testing::run_cli;

class CliPositions : public testing::CliTest {
 protected:
  std::string mha_args(const std::string& name) const {
    return "mha --weights " + cli_fixture("mha_pos_" + name + "_weights") + " --input " +
           cli_fixture("mha_pos_" + name + "_input") + " --output " + out_path();
  }

  template <class T>
  void check_case(const std::string& name) {
    SCOPED_TRACE(name);
    const auto expected = testing::load_fixture("cli/mha_pos_" + name + "_expected.safetensors");
    const auto& meta = expected.metadata();
    std::string args = mha_args(name) + " --num-heads " + meta.at("num_heads") + " --position " +
                       meta.at("position");
    if (meta.at("causal") == "true") args += " --causal";
    if (meta.at("double") == "true") args += " --double";
    const CliRun run = run_cli(args);
    ASSERT_EQ(run.exit_code, 0) << run.output;
    ATTNLENS_EXPECT_CLOSE(io::SafeTensors::load(out_path()).get<T>("output"),
                          expected.get<T>("output"), testing::default_tolerance<T>());
  }
};

TEST_F(CliPositions, MhaMatchesPyTorchForEveryPosition) {
  for (const char* name : {"alibi", "alibi_causal", "t5", "t5_causal", "rope"})
    check_case<float>(name);
  check_case<double>("rope_half");
}

TEST_F(CliPositions, PositionChangesTheOutput) {
  // The same weights without the encoding must not match the fixture (the test can fail).
  const CliRun run = run_cli(mha_args("alibi") + " --num-heads 6");
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto expected = testing::load_fixture("cli/mha_pos_alibi_expected.safetensors");
  EXPECT_GT(testing::max_abs_error(io::SafeTensors::load(out_path()).get<float>("output"),
                                   expected.get<float>("output")),
            1e-3);
}

TEST_F(CliPositions, BadPositionOptionsAreOneLineAndExitCodeTwo) {
  expect_bad_input(mha_args("alibi") + " --num-heads 6 --position sinusoid", "--position");
  // ALiBi weights have no relative_attention_bias.weight.
  expect_bad_input(mha_args("alibi") + " --num-heads 6 --position t5",
                   "relative_attention_bias.weight");
  expect_bad_input(mha_args("t5") + " --num-heads 2 --position t5 --num-buckets 16",
                   "relative_attention_bias.weight");
  expect_bad_input(mha_args("t5") + " --num-heads 2 --position t5 --max-distance 4",
                   "max_distance");
  expect_bad_input(mha_args("rope") + " --num-heads 2 --position rope --rope-base 1", "base");
  // E = 24, 8 heads: head width 3 cannot be rotated in pairs.
  expect_bad_input(mha_args("alibi") + " --num-heads 8 --position rope", "head_dim");
}

TEST_F(CliPositions, ConvMatchesPyTorchAndChecksAtAlpha20) {
  // alpha 1e40 (inf in float, once an all-NaN output that --check reported as a difference of
  // 0) is the convolution too: the heads saturate at k_saturated_alpha (docs/limits.md).
  for (const char* alpha : {"20", "1e40"}) {
    SCOPED_TRACE(alpha);
    const CliRun run =
        testing::run_cli_limited("conv --input " + cli_fixture("conv_k3_input") + " --output " +
                                 out_path() + " --alpha " + alpha + " --check");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const std::string marker = "max abs difference from the direct convolution: ";
    const auto at = run.output.find(marker);
    ASSERT_NE(at, std::string::npos) << run.output;
    EXPECT_LE(std::stod(run.output.substr(at + marker.size())), 1e-5) << run.output;
    const auto output = io::SafeTensors::load(out_path());
    EXPECT_EQ(output.info("output").dtype, io::DType::F32);
    const auto expected = testing::load_fixture("cli/conv_k3_expected.safetensors");
    ATTNLENS_EXPECT_CLOSE(output.get<float>("output"), expected.get<float>("output"), 1e-5);
  }
}

TEST_F(CliPositions, ConvBadInputIsOneLineAndExitCodeTwo) {
  const std::string output = " --output " + out_path();
  expect_bad_input("conv --input " + cli_fixture("conv_k3_expected") + output, "weight");
  expect_bad_input("conv --input " + cli_fixture("conv_k3_input") + output + " --alpha 0",
                   "--alpha");
  io::SafeTensorsWriter writer;
  writer.add("weight", Tensor<float>({2, 3, 3, 3}));
  writer.add("bias", Tensor<float>({2}));
  writer.add("input", Tensor<float>({2, 4, 4}));
  writer.save(path("bad.safetensors"));
  expect_bad_input("conv --input " + path("bad.safetensors") + output, "conv input");
}

}  // namespace
}  // namespace attnlens
